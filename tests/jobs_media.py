"""Small generated inputs for the batch tests: one talking-face clip, two audios, jobs files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2

from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav

WIDTH, HEIGHT = 160, 128
BOX = [30, 110, 40, 120]  # y1 y2 x1 x2 inside the 160x128 frames: no S3FD, so CI stays fast


def write_media(folder: Path) -> dict[str, Path]:
    """face.mp4 (160x128, 0.6 s at 25 fps) and two short speech-like WAVs (0.5 s and 0.7 s)."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "face": write_video(folder / "face.mp4", talking_face_frames(15, WIDTH, HEIGHT, seed=3), 25.0),
        "short": write_wav(folder / "short.wav", float_to_int16(speechlike_audio(0.5, seed=1)), 16000),
        "long": write_wav(folder / "long.wav", float_to_int16(speechlike_audio(0.7, seed=2)), 16000),
    }


def write_jsonl(path: Path, jobs: list[dict[str, Any] | str]) -> Path:
    """One line per job: a dict as JSON, a string as it is (for malformed lines)."""
    path.write_text("".join((job if isinstance(job, str) else json.dumps(job)) + "\n" for job in jobs))
    return path


def frame_count(path: Path) -> int:
    """Frames OpenCV decodes from ``path`` (0 for a file it cannot read)."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count
