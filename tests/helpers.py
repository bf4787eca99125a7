"""Test helpers: ffprobe-like checks and small media utilities."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from wav2lip_trt.ffmpeg import find_ffmpeg


def probe(path: Path) -> dict:
    """ffprobe-equivalent facts about a media file (streams, codecs, frames, rates, durations) via PyAV."""
    import av

    with av.open(str(path)) as container:
        info: dict = {"format": container.format.name, "duration": container.duration / 1e6 if container.duration else None}
        for stream in container.streams:
            if stream.type == "video":
                frames = sum(1 for _ in container.decode(stream))
                info["video"] = {
                    "codec": stream.codec_context.name, "width": stream.codec_context.width,
                    "height": stream.codec_context.height, "fps": float(stream.average_rate), "frames": frames,
                    "pix_fmt": stream.codec_context.pix_fmt,
                }
                container.seek(0)
            elif stream.type == "audio":
                info["audio"] = {
                    "codec": stream.codec_context.name, "sample_rate": stream.codec_context.sample_rate,
                    "duration": float(stream.duration * stream.time_base) if stream.duration else None,
                }
    return info


def decode_frames(path: Path) -> np.ndarray:
    """All frames of a (short) video as (N, H, W, 3) uint8 BGR via OpenCV."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return np.stack(frames)


def run_ffmpeg(*args: str) -> None:
    subprocess.run([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)
