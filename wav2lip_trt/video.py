"""Face input: a video, a still image or a folder of frames, read lazily.

A :class:`FaceSource` never holds more than the frame it is yielding, and can be iterated
again from the start (the reference loops the video when the audio is longer). Frames are
BGR uint8 exactly as OpenCV decodes them, with the reference's per-frame transforms applied
in its order: resize, rotate, crop. Images ignore those three options, as in the reference.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


@dataclass(frozen=True)
class FrameTransform:
    """The reference's per-frame video options (videos and frame folders only)."""

    resize_factor: int = 1  # frames shrink to (w // f, h // f), INTER_LINEAR
    rotate: bool = False  # 90 degrees clockwise, after the resize
    crop: tuple[int, int, int, int] = (0, -1, 0, -1)  # top, bottom, left, right; -1 = full size

    @property
    def is_identity(self) -> bool:
        return self.resize_factor == 1 and not self.rotate and self.crop == (0, -1, 0, -1)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if self.resize_factor > 1:
            h, w = frame.shape[:2]
            if h < self.resize_factor or w < self.resize_factor:
                raise InputError(f"--resize_factor {self.resize_factor} shrinks a {w}x{h} frame to nothing")
            frame = cv2.resize(frame, (w // self.resize_factor, h // self.resize_factor))
        if self.rotate:
            frame = cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE)
        y1, y2, x1, x2 = self.crop
        if x2 == -1:
            x2 = frame.shape[1]
        if y2 == -1:
            y2 = frame.shape[0]
        return frame[y1:y2, x1:x2]


@dataclass(frozen=True)
class FaceSourceInfo:
    """What the pipeline needs to know before decoding: kind, rate and output frame size."""

    path: Path
    kind: str  # "video", "image" or "frames"
    fps: float  # container rate for videos, --fps otherwise
    width: int  # after the transform
    height: int
    frame_count: int | None  # exact for images and folders, the container's estimate for videos


def natural_key(name: str) -> list[object]:
    """Sort key putting frame2 before frame10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


MAX_FPS = 1000.0  # one output frame per 1/fps s of audio: a rate beyond this is a typo, not a video


def check_fps(fps: float) -> None:
    """``--fps`` as given for images and frame folders (a video's own rate is checked where it is read)."""
    if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise InputError(f"--fps must be a frame rate above 0 and at most {MAX_FPS:g}, got {fps}")


class FaceSource:
    """Opens the face input once to learn its geometry; :meth:`frames` decodes lazily."""

    def __init__(self, path: str | Path, *, fps: float = 25.0, transform: FrameTransform = FrameTransform()) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"face input not found: {self.path}")
        check_fps(fps)
        self._files: list[Path] = []
        self._exact_count: int | None = None
        if self.path.is_dir():
            kind = "frames"
            self._files = sorted(
                (p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                key=lambda p: natural_key(p.name),
            )
            if not self._files:
                raise InputError(
                    f"{self.path}: folder holds no frames ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
        elif self.path.suffix.lower() in IMAGE_SUFFIXES:
            kind = "image"
        else:
            kind = "video"
        self.kind = kind
        self.transform = FrameTransform() if kind == "image" else transform
        raw = self._raw_frames()
        try:
            first = next(raw, None)
        finally:
            raw.close()
        if first is None:
            raise InputError(f"{self.path}: no frames could be decoded")
        shaped = self._apply(first, 0)
        count: int | None
        if kind == "video":
            fps, count = self._video_rate_and_count(fps)
        else:
            count = 1 if kind == "image" else len(self._files)
        self.info = FaceSourceInfo(self.path, kind, float(fps), shaped.shape[1], shaped.shape[0], count)

    def _video_rate_and_count(self, fallback_fps: float) -> tuple[float, int | None]:
        cap = cv2.VideoCapture(str(self.path))
        try:
            fps = cap.get(cv2.CAP_PROP_FPS)
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        finally:
            cap.release()
        if not fps or not np.isfinite(fps) or fps <= 0:
            fps = fallback_fps
        if fps > MAX_FPS:  # one output frame per 1/fps s of audio: this would be millions of frames
            raise InputError(f"{self.path}: the video says it runs at {fps:g} frames/s, more than {MAX_FPS:g}; "
                             "re-encode it at its real rate (ffmpeg -i IN -r 25 OUT.mp4)")
        return fps, (count if count > 0 else None)

    def exact_frame_count(self) -> int:
        """The number of frames :meth:`frames` yields; for a video that means reading it through once
        (its container's count is an estimate), remembered for this source."""
        if self.kind != "video":
            return 1 if self.kind == "image" else len(self._files)
        if self._exact_count is None:
            cap = cv2.VideoCapture(str(self.path))
            count = 0
            try:
                while cap.grab():
                    count += 1
            finally:
                cap.release()
            self._exact_count = count
        return self._exact_count

    def _raw_frames(self, buffer: Callable[[], np.ndarray] | None = None) -> Iterator[np.ndarray]:
        if self.kind == "video":
            cap = cv2.VideoCapture(str(self.path))
            if not cap.isOpened():
                raise InputError(f"{self.path}: cannot open as a video or image")
            try:
                while True:
                    ok, frame = cap.read(buffer()) if buffer is not None else cap.read()  # decoded into it when it fits
                    if not ok:
                        return
                    yield frame
            finally:
                cap.release()
        elif self.kind == "image":
            yield self._read_image(self.path)
        else:
            for file in self._files:
                yield self._read_image(file)

    @staticmethod
    def _read_image(path: Path) -> np.ndarray:
        data = np.fromfile(path, dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if image is None:
            raise InputError(f"{path}: not a readable image")
        return image

    def _apply(self, frame: np.ndarray, index: int) -> np.ndarray:
        out = frame if self.transform.is_identity else self.transform(frame)
        if out.size == 0:
            raise InputError(
                f"{self.path}: frame {index} is empty after --resize_factor/--rotate/--crop "
                f"(crop {list(self.transform.crop)} of a {frame.shape[1]}x{frame.shape[0]} frame)"
            )
        return out

    def frames(self, limit: int | None = None, buffer: Callable[[], np.ndarray] | None = None) -> Iterator[np.ndarray]:
        """Yield up to ``limit`` transformed frames from the start; every call starts over.

        ``buffer()`` gives the array each video frame is decoded into (a recycled one: see
        :class:`~wav2lip_trt.execution.memory.HostPool`); used as the frame when no transform applies.
        """
        if limit is not None and limit <= 0:
            return
        size: tuple[int, ...] | None = None
        for index, raw in enumerate(self._raw_frames(buffer if self.transform.is_identity else None)):
            frame = self._apply(raw, index)
            if size is None:
                size = frame.shape
            elif frame.shape != size:
                where = self._files[index] if self.kind == "frames" else f"frame {index}"
                raise InputError(
                    f"{where}: size {frame.shape[1]}x{frame.shape[0]} differs from the first frame's "
                    f"{size[1]}x{size[0]}; all frames must share one size"
                )
            yield frame
            if limit is not None and index + 1 >= limit:
                return

    def timestamp(self, index: int) -> float:
        """Seconds from the start at which frame ``index`` is shown."""
        return index / self.info.fps
