"""``--detect-size N``: run S3FD on frames whose longer side is scaled down to N pixels.

What it trades: S3FD is fully convolutional, so its cost grows with the pixel count, i.e. about
quadratically in the frame's side (1280x720 -> 480x270 is 7.1x fewer pixels). The price is
resolution: a face that is small in the full frame shrinks by the same factor and S3FD misses
faces below roughly 10-15 pixels, and boxes are only as precise as one scaled pixel (``fx`` full
pixels). Talking-head videos, whose face fills much of the frame, lose nothing visible.

Scaling uses OpenCV's INTER_LINEAR on the host and :func:`wav2lip_trt.kernels.resize_linear`
(bit-exact INTER_LINEAR) on the device, so both paths feed S3FD the same pixels and choose the
same boxes. INTER_AREA would anti-alias large reductions better, but has no bit-exact device
kernel here; for the usual factors (<= 4) S3FD's first convolutions smooth the aliasing anyway,
and an exact 2x reduction is INTER_AREA already (OpenCV switches to it).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..detect import MIN_FRAME_SIDE
from ..errors import InputError
from ..kernels.resize import resize_linear

Box = tuple[int, int, int, int]
"""(x1, y1, x2, y2), clipped at 0 from below only, as :mod:`wav2lip_trt.detect` returns it."""


def check_detect_size(size: int | None) -> int | None:
    """Validate ``--detect-size`` (None = off); S3FD needs at least 32 pixels on a side."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_FRAME_SIDE:
        raise InputError(
            f"--detect-size must be an integer >= {MIN_FRAME_SIDE} (S3FD's smallest frame side), got {size!r}"
        )
    return size


def detect_scale(width: int, height: int, size: int | None) -> tuple[int, int, float, float] | None:
    """The detection frame size for a ``width`` x ``height`` video, or None when no scaling applies.

    Returns ``(scaled_width, scaled_height, fx, fy)``: the longer side becomes exactly ``size``,
    the shorter ``round(shorter * size / longer)`` with halves rounded up, in exact integers (at
    least 1), and ``fx = width / scaled_width``, ``fy = height / scaled_height`` map back. None
    when ``size`` is None or the longer side is already <= ``size`` (never upscale). A scaled
    shorter side under 32 pixels is an InputError, as S3FD cannot run on it.
    """
    check_detect_size(size)
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    longer, shorter = max(width, height), min(width, height)
    if size is None or longer <= size:
        return None
    scaled_shorter = max(1, (2 * shorter * size + longer) // (2 * longer))
    if scaled_shorter < MIN_FRAME_SIDE:
        raise InputError(
            f"--detect-size {size} scales the {width}x{height} frames to a shorter side of {scaled_shorter} "
            f"pixels, below S3FD's {MIN_FRAME_SIDE}; use a --detect-size of at least "
            f"{-(-MIN_FRAME_SIDE * longer // shorter)} or leave it off"
        )
    scaled_width, scaled_height = (size, scaled_shorter) if width >= height else (scaled_shorter, size)
    return scaled_width, scaled_height, width / scaled_width, height / scaled_height


def scale_frames_host(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """(B, H, W, 3) uint8 frames -> (B, height, width, 3) with ``cv2.resize`` INTER_LINEAR."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"expected (B, H, W, C) uint8 frames, got {frames.shape} {frames.dtype}")
    out = np.empty((len(frames), height, width, frames.shape[3]), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR).reshape(out.shape[1:])
    return out


def scale_frames_device(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """:func:`scale_frames_host` for a (B, H, W, 3) uint8 tensor on any device, bit for bit."""
    if frames.ndim != 4:
        raise ValueError(f"expected (B, H, W, C) uint8 frames, got {tuple(frames.shape)} {frames.dtype}")
    return resize_linear(frames, width, height)


def map_box_back(box: Box | None, fx: float, fy: float, width: int, height: int) -> Box | None:
    """A box found in the scaled frame, in full-frame pixels; None stays None.

    ``fx``, ``fy`` are :func:`detect_scale`'s factors and ``width``, ``height`` the *full* frame
    size. Rounding is outward, so the face is never shrunk: x1, y1 floored, x2, y2 ceiled; then
    clipped at 0 from below only (x2/y2 may exceed the frame, as S3FD's own boxes may). The
    products are exact: the scaled size is recovered as ``round(width / fx)`` and the mapping is
    ``x * width / scaled_width`` in integers, because a float product such as
    ``480 * (1280 / 480)`` can land a hair off 1280 and floor or ceil to the wrong pixel.
    """
    if box is None:
        return None
    scaled_width, scaled_height = _scaled_side(width, fx, "x"), _scaled_side(height, fy, "y")
    x1, y1, x2, y2 = (int(v) for v in box)
    return (
        max(0, (x1 * width) // scaled_width),
        max(0, (y1 * height) // scaled_height),
        max(0, -((-x2 * width) // scaled_width)),
        max(0, -((-y2 * height) // scaled_height)),
    )


def _scaled_side(full: int, factor: float, axis: str) -> int:
    if full < 1 or not factor > 0:
        raise ValueError(f"bad {axis} mapping: full side {full}, factor {factor}")
    scaled = max(1, round(full / factor))
    if abs(full / scaled - factor) > 1e-9 * factor:
        raise ValueError(f"{axis} factor {factor} is not {full} / an integer side; use detect_scale's factors")
    return scaled
