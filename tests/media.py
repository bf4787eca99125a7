"""Synthetic media for tests: speech-like audio, WAV files, and ffmpeg-made mp3/mp4 files.

Everything is generated from a seed, so tests need no downloaded media.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from wav2lip_trt.ffmpeg import find_ffmpeg
from wav2lip_trt.samples import float_to_int16, write_wav  # noqa: F401  (re-exported for tests)
from wav2lip_trt.samples import speechlike_audio as make_speechlike_audio  # noqa: F401


def make_sine(seconds: float, rate: int = 16000, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    """A float32 mono sine."""
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def run_ffmpeg(*args: str | os.PathLike[str]) -> None:
    """Run the project's ffmpeg with ``args`` (quiet, overwriting); fail with its log."""
    cmd = [find_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(os.fspath, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")


def encode_audio(src: str | os.PathLike[str], dst: str | os.PathLike[str], *codec_args: str) -> Path:
    """Transcode ``src`` to ``dst`` (format from the extension), e.g. ``"-c:a", "libmp3lame"``."""
    run_ffmpeg("-i", src, *codec_args, dst)
    return Path(dst)


def make_video(
    path: str | os.PathLike[str],
    *,
    seconds: float,
    fps: float = 25.0,
    size: tuple[int, int] = (64, 48),
    audio: str | os.PathLike[str] | None = None,
    video_codec: str = "mpeg4",
    audio_codec: str = "aac",
) -> Path:
    """A test-pattern video of ``size`` = (width, height); with ``audio`` (a file), an audio track too."""
    width, height = size
    args: list[str | os.PathLike[str]] = [
        "-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate={fps}:duration={seconds}",
    ]  # fmt: skip
    if audio is not None:
        args += ["-i", audio, "-c:a", audio_codec]
    args += ["-c:v", video_codec, "-pix_fmt", "yuv420p", path]
    run_ffmpeg(*args)
    return Path(path)


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


def random_s3fd_outputs(rng, batch, height, width, scale=3.0, quantum=None, loc_scale=1.0):
    """Raw S3FD head outputs of the right shapes: face logits ~N(-3, scale), optionally quantised
    (to force exact ties), and box offsets ~N(0, loc_scale)."""
    import torch

    from wav2lip_trt.models.s3fd import head_map_sizes

    outputs = []
    for h, w in head_map_sizes(height, width):
        cls = rng.normal(0, scale, (batch, 2, h, w)) - np.array([0, 3.0])[None, :, None, None]
        if quantum:
            cls = np.round(cls / quantum) * quantum
        outputs += [
            torch.from_numpy(cls.astype(np.float32)),
            torch.from_numpy(rng.normal(0, loc_scale, (batch, 4, h, w)).astype(np.float32)),
        ]
    return outputs


S3FD_BACKGROUND = -10.0  # face logit of an empty position: score sigmoid(-10) ~ 4.5e-5


def blank_s3fd_outputs(batch: int, height: int = 64, width: int = 64) -> list:
    """Raw S3FD head outputs with no face anywhere, to place hand-made faces into."""
    import torch

    from wav2lip_trt.models.s3fd import head_map_sizes

    outputs = []
    for h, w in head_map_sizes(height, width):
        cls = torch.zeros(batch, 2, h, w)
        cls[:, 1] = S3FD_BACKGROUND
        outputs += [cls, torch.zeros(batch, 4, h, w)]
    return outputs


def place_face(outputs: list, level: int, image: int, h: int, w: int, logit: float,
               loc: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)) -> None:
    """Put a face logit (background logit 0, so score = sigmoid(logit)) and loc at a position."""
    import torch

    outputs[2 * (level - 1)][image, :, h, w] = torch.tensor([0.0, logit])
    outputs[2 * (level - 1) + 1][image, :, h, w] = torch.tensor(loc)
