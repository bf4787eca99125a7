"""S3FD pre-processing on device: uint8 BGR frames -> the engine's (B, 3, H, W) input in one pass."""

from __future__ import annotations

import torch

from ..detect import S3FD_MEAN_RGB
from .backend import Impl, cdiv, launch, resolve_impl, triton_kernels

BLOCK = 1024  # pixels per Triton program
INPUT_DTYPES = (torch.float32, torch.float16)


def s3fd_preprocess(
    frames: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    *,
    out: torch.Tensor | None = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """The reference's BGR -> RGB flip and integer mean subtraction, cast to the engine's dtype.

    The results are small integers (-123..151), exact in float16 too, so an FP16 engine's input
    equals the reference's float32 input. ``out`` (contiguous, (B, 3, H, W)) lets the caller
    write straight into an engine's input binding.

    frames: (B, H, W, 3) uint8 BGR on any device. Returns (B, 3, H, W) ``dtype`` RGB - means.
    """
    _check_frames(frames)
    if dtype not in INPUT_DTYPES:
        raise ValueError(f"S3FD input dtype must be float32 or float16, got {dtype}")
    b, h, w, _ = frames.shape
    if out is None:
        out = torch.empty((b, 3, h, w), dtype=dtype, device=frames.device)
    elif out.shape != (b, 3, h, w) or out.dtype != dtype or not out.is_contiguous() or out.device != frames.device:
        raise ValueError(f"out must be a contiguous ({b}, 3, {h}, {w}) {dtype} tensor on {frames.device}")
    if resolve_impl(impl, frames.device) == "torch":
        out.copy_(s3fd_preprocess_torch(frames, dtype))
        return out
    if b == 0 or h * w == 0:
        return out
    kernels = triton_kernels(frames.device)
    grid = (cdiv(h * w, BLOCK), b)
    launch(kernels.s3fd_preprocess_kernel, grid, frames.contiguous(), out, h * w, *S3FD_MEAN_RGB, BLOCK=BLOCK)
    return out


def s3fd_preprocess_torch(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Reference implementation: the same integer arithmetic with plain torch ops."""
    _check_frames(frames)
    mean = torch.tensor(S3FD_MEAN_RGB, dtype=torch.int16, device=frames.device)
    rgb = frames.flip(-1).to(torch.int16) - mean
    return rgb.permute(0, 3, 1, 2).to(dtype).contiguous()


def _check_frames(frames: torch.Tensor) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"expected (B, H, W, 3) uint8 BGR frames, got {tuple(frames.shape)} {frames.dtype}")
