"""BGR -> YUV 4:2:0 (``yuv420p``) as FFmpeg's swscale does it with ``accurate_rnd``, in torch.

The output writer hands ffmpeg ``bgr24`` frames and lets swscale convert them (``-sws_flags
accurate_rnd+full_chroma_int``). On the GPU path that conversion is the host's largest cost after
x264 (40-100 fps per thread at 1080p) and needs twice the bytes copied back, so there the frames
are converted on the device and ffmpeg gets ``yuv420p``. What swscale computes (FFmpeg 9,
established by fitting its output on random frames; ``tests/test_kernels_yuv.py`` compares with
the real ffmpeg):

1. BT.601, limited range: ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``, per pixel.
2. Chroma: each horizontal pair of pixels is averaged first (swscale's ``*ToUV_half`` input),
   ``U = 128 + (-37.797 R - 74.203 G + 112 B) / 255``, ``V = 128 + (112 R - 93.786 G - 18.214 B) / 255``.
3. Vertically, chroma row ``i`` is the default bicubic (B = 0, C = 0.6) downscale by two centred
   between rows ``2i`` and ``2i + 1``: eight taps over rows ``2i - 3 .. 2i + 4``, rows beyond the
   frame repeating its edge.
4. Rounded to the nearest level.

swscale does this in 15-bit fixed point with 14-bit filter coefficients; this is float32
arithmetic (elementwise only: no convolution, so no TF32 on CUDA), so a value that falls within
rounding distance of a half level can land one level apart (about 0.5 % of luma and 2 % of chroma
samples). Frames of odd width or height are padded with black to even sizes first, as the
writer's ``pad`` filter does for ``bgr24`` input.
"""

from __future__ import annotations

import torch

_LUMA = (24.966, 128.553, 65.481)  # B, G, R weights of Y (x 1/255), BT.601 limited range
_CB = (112.0, -74.203, -37.797)
_CR = (-18.214, -93.786, 112.0)


def _bicubic(x: float, a: float = -0.6) -> float:
    x = abs(x)
    if x < 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0


_RAW_TAPS = [_bicubic(d / 2) for d in (3.5, 2.5, 1.5, 0.5, 0.5, 1.5, 2.5, 3.5)]
CHROMA_TAPS = tuple(t / sum(_RAW_TAPS) for t in _RAW_TAPS)
"""Weights of rows ``2i - 3 .. 2i + 4`` in chroma row ``i`` (sum 1)."""
CHUNK = 8  # frames converted at once: bounds the float32 temporaries (about 24 bytes a pixel)


def bgr_to_yuv420(frames: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 BGR -> (B, H' W' 3 / 2) uint8 planar Y, U, V per frame (H', W': H, W made even).

    Runs where ``frames`` are (CPU or CUDA) and, on CUDA, on the current stream; the result is
    ffmpeg's ``-pix_fmt yuv420p`` rawvideo of the frames padded to even sizes.
    """
    if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"expected (B, H, W, 3) uint8 frames, got {tuple(frames.shape)} {frames.dtype}")
    count, height, width, _ = frames.shape
    if height % 2 or width % 2:
        frames = torch.nn.functional.pad(frames, (0, 0, 0, width % 2, 0, height % 2))  # black, right and bottom
    out = torch.empty((count, frames.shape[1] * frames.shape[2] * 3 // 2), dtype=torch.uint8, device=frames.device)
    for start in range(0, count, CHUNK):
        _convert(frames[start : start + CHUNK], out[start : start + CHUNK])
    return out


def _mix(b: torch.Tensor, g: torch.Tensor, r: torch.Tensor, weights: tuple[float, float, float]) -> torch.Tensor:
    return (b * weights[0] + g * weights[1] + r * weights[2]) * (1 / 255)


def _level(plane: torch.Tensor, offset: float) -> torch.Tensor:
    return torch.floor(plane + (offset + 0.5)).clamp_(0, 255).to(torch.uint8)


def _convert(frames: torch.Tensor, out: torch.Tensor) -> None:
    count, height, width, _ = frames.shape
    x = frames.to(torch.float32)
    b, g, r = x.unbind(-1)
    luma = height * width
    out[:, :luma].view(count, height, width).copy_(_level(_mix(b, g, r, _LUMA), 16.0))
    pairs = x.view(count, height, width // 2, 2, 3).sum(3) * 0.5  # swscale's *ToUV_half: pairs averaged
    pb, pg, pr = pairs.unbind(-1)
    chroma = (height // 2) * (width // 2)
    for k, weights in enumerate((_CB, _CR)):
        plane = _vertical(_mix(pb, pg, pr, weights))
        start = luma + k * chroma
        out[:, start : start + chroma].view(count, height // 2, width // 2).copy_(_level(plane, 128.0))


def _vertical(plane: torch.Tensor) -> torch.Tensor:
    """(B, H, W/2) full-height chroma -> (B, H/2, W/2): the eight-tap filter, edges repeated."""
    height = plane.shape[1]
    rows = torch.arange(-3, height + 5, device=plane.device).clamp_(0, height - 1)
    padded = plane.index_select(1, rows)  # row 2i - 3 + k of the frame is padded row 2i + k
    half = height // 2
    acc = padded[:, 0 : 2 * half : 2] * CHROMA_TAPS[0]
    for k in range(1, len(CHROMA_TAPS)):
        acc = acc + padded[:, k : k + 2 * half : 2] * CHROMA_TAPS[k]
    return acc
