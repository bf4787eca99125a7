"""Paste-back on device: generated faces resized into their boxes, written into the frames in place.

``blend="none"`` equals ``faces.paste_back(frame, faces.prediction_to_uint8(pred), box)`` bit for
bit: truncation of ``pred * 255`` to uint8, OpenCV INTER_LINEAR resize to the box, and the whole
box overwritten. ``blend="feather"`` (not in the reference) hides the box seam with a linear
alpha ramp: a pixel k pixels from the nearest box edge takes weight ``min(2k + 1, 2R) / 2R`` of
the prediction and the rest from the frame, where the ramp width is
``R = max(1, min(box height, box width) // FEATHER_DIVISOR)`` pixels (a tenth of the box's
shorter side); integer arithmetic, rounded half up, so both implementations agree exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..faces import IMG_SIZE
from .backend import Impl, cdiv, launch, resolve_impl, triton_kernels
from .resize import resize_linear

BLENDS = ("none", "feather")
FEATHER_DIVISOR = 10  # ramp width = shorter box side // this (at least 1 pixel)
BLOCK = 1024  # box pixels per Triton program


def paste_back_batch(
    frames: torch.Tensor,
    pred: torch.Tensor,
    boxes: torch.Tensor | np.ndarray | Sequence[Sequence[int]],
    blend: str = "none",
    *,
    impl: Impl = "auto",
    host_boxes: np.ndarray | None = None,
) -> torch.Tensor:
    """Write each prediction into its frame's box, in place; returns ``frames``.

    frames: (B, H, W, 3) uint8 BGR; pred: (B, 3, 96, 96) float32/float16 sigmoid output, BGR;
    boxes: (B, 4) y1, y2, x1, x2. The reference requires the box inside the frame; here box
    pixels outside the frame are dropped, and empty boxes leave the frame unchanged. The grid
    is sized from the largest box, read from ``host_boxes`` (the same boxes, on the host) when
    given; otherwise device boxes cost one blocking copy to the host.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"expected (B, H, W, 3) uint8 BGR frames, got {tuple(frames.shape)} {frames.dtype}")
    if pred.shape != (frames.shape[0], 3, IMG_SIZE, IMG_SIZE):
        expected = (frames.shape[0], 3, IMG_SIZE, IMG_SIZE)
        raise ValueError(f"expected {expected} predictions, got {tuple(pred.shape)}")
    if blend not in BLENDS:
        raise ValueError(f"unknown blend {blend!r}; choose one of {', '.join(BLENDS)}")
    if host_boxes is None:
        host_boxes = np.asarray(boxes.cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=np.int64)
    host_boxes = np.asarray(host_boxes, dtype=np.int64).reshape(-1, 4)
    if len(host_boxes) != frames.shape[0]:
        raise ValueError(f"expected one (y1, y2, x1, x2) box per frame ({frames.shape[0]}), got {len(host_boxes)}")
    if resolve_impl(impl, frames.device) == "torch":
        return paste_back_torch(frames, pred, host_boxes, blend)
    if not frames.is_contiguous():
        raise ValueError("frames must be contiguous to be written in place")
    heights = np.clip(host_boxes[:, 1] - host_boxes[:, 0], 0, None)
    widths = np.clip(host_boxes[:, 3] - host_boxes[:, 2], 0, None)
    largest = int((heights * widths).max()) if len(host_boxes) else 0
    if largest == 0:
        return frames
    kernels = triton_kernels(frames.device)
    on_device = isinstance(boxes, torch.Tensor) and boxes.device == frames.device
    boxes_t = boxes.to(torch.int64).reshape(-1, 4).contiguous() if on_device else torch.from_numpy(host_boxes).to(frames.device)
    launch(
        kernels.paste_kernel, (cdiv(largest, BLOCK), frames.shape[0]),
        frames, pred.contiguous(), boxes_t, frames.shape[1], frames.shape[2], FEATHER_DIVISOR,
        SRC=IMG_SIZE, FEATHER=blend == "feather", BLOCK=BLOCK,
    )
    return frames


def prediction_to_uint8_torch(pred: torch.Tensor) -> torch.Tensor:
    """(B, 3, 96, 96) float -> (B, 96, 96, 3) uint8: the reference's float32 ``pred * 255`` truncated."""
    return (pred.to(torch.float32).permute(0, 2, 3, 1) * 255.0).clamp(0, 255).to(torch.uint8)


def paste_back_torch(
    frames: torch.Tensor, pred: torch.Tensor, boxes: np.ndarray | Sequence[Sequence[int]], blend: str = "none"
) -> torch.Tensor:
    """Reference implementation of :func:`paste_back_batch` (one resize per item)."""
    faces = prediction_to_uint8_torch(pred)
    height, width = frames.shape[1:3]
    for i, (y1, y2, x1, x2) in enumerate(np.asarray(boxes, dtype=np.int64).reshape(-1, 4).tolist()):
        box_h, box_w = y2 - y1, x2 - x1
        top, bottom, left, right = max(y1, 0), min(y2, height), max(x1, 0), min(x2, width)
        if box_h <= 0 or box_w <= 0 or bottom <= top or right <= left:
            continue
        patch = resize_linear(faces[i], box_w, box_h)[top - y1 : bottom - y1, left - x1 : right - x1]
        if blend == "feather":
            weight = feather_weights(box_h, box_w, frames.device)[top - y1 : bottom - y1, left - x1 : right - x1, None]
            ramp = max(1, min(box_h, box_w) // FEATHER_DIVISOR)
            old = frames[i, top:bottom, left:right].to(torch.int32)
            patch = ((patch.to(torch.int32) * weight + old * (2 * ramp - weight) + ramp) // (2 * ramp)).to(torch.uint8)
        frames[i, top:bottom, left:right] = patch
    return frames


def feather_weights(box_h: int, box_w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(box_h, box_w) int32 prediction weights out of ``2R`` for the feathered blend."""
    ramp = max(1, min(box_h, box_w) // FEATHER_DIVISOR)
    dy = torch.arange(box_h, device=device, dtype=torch.int32)[:, None]
    dx = torch.arange(box_w, device=device, dtype=torch.int32)[None, :]
    edge = torch.minimum(torch.minimum(dy, box_h - 1 - dy), torch.minimum(dx, box_w - 1 - dx))
    return torch.clamp(2 * edge + 1, max=2 * ramp)
