"""OpenCV's ``cv2.resize(..., INTER_LINEAR)`` for uint8 images, bit for bit, in torch.

The reference resizes every crop to 96x96 and every prediction back to its box with OpenCV, so
the device path must reproduce OpenCV's fixed-point arithmetic, not a float bilinear filter
(which differs by 1 on a few percent of the pixels). Established by comparing with
``cv2.resize`` (opencv-python 5.0, x86-64) over all source/destination sizes in the tests:

1. Coordinates: ``scale = 1 / (dst / src)`` in float64; for each destination index d,
   ``f = float32((d + 0.5) * scale - 0.5)``, ``s = floor(f)``, ``f -= s`` (float32).
   Columns clamp at the borders: ``s < 0`` -> (0, f = 0); ``s >= src - 1`` -> (src - 1, f = 0).
   Rows keep their fraction; only the two row indices ``s``, ``s + 1`` are clamped to the image.
2. Weights: ``w0 = rint(float32(1 - f) * 2048)``, ``w1 = rint(f * 2048)`` (round half to
   even; ``INTER_RESIZE_COEF_BITS = 11``).
3. Horizontal pass, exact in int32: ``h = p[s] * w0 + p[s + 1] * w1`` (at most 255 * 2048).
4. Vertical pass, OpenCV's uint8 specialisation (its SIMD body and its scalar tail alike, so
   it does not depend on the CPU's vector width):
   ``((((h0 >> 4) * v0) >> 16) + (((h1 >> 4) * v1) >> 16) + 2) >> 2``, at most 255.
   (The generic ``(h0 * v0 + h1 * v1 + 2**21) >> 22`` differs by 1 on some pixels.)
5. An exact 2x downscale in both axes is switched to INTER_AREA, ``(a + b + c + d + 2) >> 2``;
   with the weights above (f = 0.5 -> 1024 each) the same formula already gives that, and an
   unchanged size gives a copy, so neither needs a special case.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

COEF_BITS = 11  # OpenCV INTER_RESIZE_COEF_BITS
COEF_ONE = 1 << COEF_BITS


class Taps(NamedTuple):
    """Per destination index: the two source indices and their fixed-point weights."""

    i0: torch.Tensor  # (N, count) int64, clamped to [0, src - 1]
    i1: torch.Tensor  # (N, count) int64, clamped to [0, src - 1]
    w0: torch.Tensor  # (N, count) int32
    w1: torch.Tensor  # (N, count) int32


def linear_taps(src: torch.Tensor, dst: torch.Tensor, count: int, *, columns: bool) -> Taps:
    """OpenCV's INTER_LINEAR source indices and weights along one axis, for N images at once.

    src, dst: (N,) int64 sizes (src >= 1, dst >= 1); entries past an image's ``dst`` are
    computed but meaningless. ``columns`` selects the column rule (fraction zeroed at the
    borders) rather than the row rule (fraction kept, indices clamped).
    """
    inv = dst.to(torch.float64) / src.to(torch.float64)
    scale = 1.0 / inv
    d = torch.arange(count, device=src.device, dtype=torch.float64)
    f = ((d[None, :] + 0.5) * scale[:, None] - 0.5).to(torch.float32)
    s = torch.floor(f)
    f = f - s
    s = s.to(torch.int64)
    last = (src - 1)[:, None]
    if columns:
        edge = (s < 0) | (s >= last)
        f = torch.where(edge, torch.zeros_like(f), f)
        s = torch.where(s < 0, torch.zeros_like(s), torch.minimum(s, last))
    w0 = torch.round((1.0 - f) * float(COEF_ONE)).to(torch.int32)
    w1 = torch.round(f * float(COEF_ONE)).to(torch.int32)
    zero = torch.zeros_like(s)
    i0 = torch.minimum(torch.maximum(s, zero), last)
    i1 = torch.minimum(torch.maximum(s + 1, zero), last)
    return Taps(i0, i1, w0, w1)


def vertical_pass(h0: torch.Tensor, h1: torch.Tensor, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Combine two horizontally filtered rows (int32, weight 2048) the way OpenCV's SIMD code does."""
    t0 = ((h0 >> 4) * v0) >> 16
    t1 = ((h1 >> 4) * v1) >> 16
    return ((t0 + t1 + 2) >> 2).clamp(0, 255).to(torch.uint8)


def resize_linear(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``cv2.resize(image, (width, height))`` for one (h, w, C) uint8 image, or each of a (B, h, w, C) batch.

    The taps are computed on the host once per call and reach the device in one non-blocking
    copy on the current stream; a batch is resized one image at a time to keep the int32
    intermediates at one image's size.
    """
    if image.ndim not in (3, 4) or image.dtype != torch.uint8:
        raise ValueError(f"expected an (h, w, C) or (B, h, w, C) uint8 image, got {tuple(image.shape)} {image.dtype}")
    h, w = image.shape[-3:-1]
    if h < 1 or w < 1 or width < 1 or height < 1:
        raise ValueError(f"cannot resize {w}x{h} to {width}x{height}")
    x0, x1, a0, a1, y0, y1, v0, v1 = _device_taps(h, w, height, width, image.device)
    if image.ndim == 4:
        return torch.stack([_resize_one(frame, x0, x1, a0, a1, y0, y1, v0, v1) for frame in image]) if len(image) else \
            image.new_empty((0, height, width, image.shape[-1]))
    return _resize_one(image, x0, x1, a0, a1, y0, y1, v0, v1)


def _device_taps(h: int, w: int, height: int, width: int, device: torch.device) -> list[torch.Tensor]:
    cpu = torch.device("cpu")
    cols = linear_taps(_sizes(w, cpu), _sizes(width, cpu), width, columns=True)
    rows = linear_taps(_sizes(h, cpu), _sizes(height, cpu), height, columns=False)
    parts = [cols.i0[0], cols.i1[0], cols.w0[0], cols.w1[0], rows.i0[0], rows.i1[0], rows.w0[0], rows.w1[0]]
    packed = torch.cat([p.to(torch.int64) for p in parts])
    if device.type == "cuda":
        packed = packed.pin_memory().to(device, non_blocking=True)
    else:
        packed = packed.to(device)
    x0, x1, a0, a1, y0, y1, v0, v1 = torch.split(packed, [width] * 4 + [height] * 4)
    return [x0, x1, a0.to(torch.int32), a1.to(torch.int32), y0, y1, v0.to(torch.int32), v1.to(torch.int32)]


def _resize_one(image: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, a0: torch.Tensor, a1: torch.Tensor,
                y0: torch.Tensor, y1: torch.Tensor, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    px = image.to(torch.int32)
    horizontal = px[:, x0] * a0[None, :, None] + px[:, x1] * a1[None, :, None]  # (h, width, C)
    return vertical_pass(horizontal[y0], horizontal[y1], v0[:, None, None], v1[:, None, None])


def _sizes(value: int, device: torch.device) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.int64, device=device)
