"""Face crops and the Wav2Lip feed on device: crop -> 96x96 -> mask -> 6-channel input, plus mel chunks.

Equal to ``faces.crop_faces`` + ``faces.generator_inputs`` bit for bit: the resize is OpenCV's
INTER_LINEAR arithmetic (see resize.py) and the float values come from the same 256-entry
table (float64 ``x / 255`` cast to float32).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..faces import IMG_SIZE
from .backend import Impl, cdiv, launch, resolve_impl, triton_kernels
from .resize import linear_taps, vertical_pass

N_MELS = 80  # mel bands per chunk
MEL_STEP = 16  # mel frames per chunk
BLOCK = 1024  # output pixels per Triton program

BoxesLike = torch.Tensor | np.ndarray | Sequence[Sequence[int]]
"""(B, 4) y1, y2, x1, x2 per item (the reference's crop order), on any device or the host."""


def unit_table(device: torch.device | str = "cpu") -> torch.Tensor:
    """(256,) float32: uint8 -> [0, 1] exactly as the reference's float64 ``x / 255.`` cast to float32."""
    return (torch.arange(256, dtype=torch.float64, device=device) / 255.0).to(torch.float32)


def crop_faces_device(
    frames: torch.Tensor, boxes: BoxesLike, size: int = IMG_SIZE, *, impl: Impl = "auto"
) -> torch.Tensor:
    """``cv2.resize(frame[y1:y2, x1:x2], (size, size))`` per item, batched on the frames' device.

    frames: (B, H, W, 3) uint8 BGR. Box bounds follow numpy slice semantics (negative values
    count from the end, bounds past the frame are cut), as the reference's ``frame[y1:y2, x1:x2]``.
    Returns (B, size, size, 3) uint8.
    """
    boxes_t = _boxes(boxes, frames)
    if resolve_impl(impl, frames.device) == "torch":
        return crop_faces_torch(frames, boxes_t, size)
    faces, _ = _crop_triton(frames, boxes_t, size, write_faces=True, write_input=False)
    return faces


def crop_to_generator_input(
    frames: torch.Tensor,
    boxes: BoxesLike,
    mel: torch.Tensor | np.ndarray,
    starts: torch.Tensor | Sequence[int],
    *,
    impl: Impl = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Wav2Lip feed for a batch, as ``faces.generator_inputs(faces.crop_faces(...), chunks)``.

    frames: (B, H, W, 3) uint8 BGR (one per item; repeat a frame for static input); boxes as in
    :func:`crop_faces_device`; mel: the whole (80, T) spectrogram (float32 or float64, moved to
    the frames' device if needed); starts: (B,) first mel column of each item's chunk, as the
    reference computes it (the last chunk starts at T - 16).
    Returns mel (B, 1, 80, 16) float32 and face (B, 6, 96, 96) float32 in [0, 1],
    channels ``[masked B, G, R, reference B, G, R]`` with rows 48..95 of the masked half zeroed.
    """
    device = frames.device
    boxes_t = _boxes(boxes, frames)
    mel_t = torch.as_tensor(mel, device=device)
    if mel_t.ndim != 2 or mel_t.shape[0] != N_MELS or mel_t.shape[1] < MEL_STEP:
        raise ValueError(f"expected an ({N_MELS}, T >= {MEL_STEP}) mel spectrogram, got {tuple(mel_t.shape)}")
    starts_t = torch.as_tensor(starts).to(torch.int64)
    if starts_t.shape != (frames.shape[0],):
        raise ValueError(f"expected {frames.shape[0]} chunk starts, got shape {tuple(starts_t.shape)}")
    last = mel_t.shape[1] - MEL_STEP
    if starts_t.device.type == "cpu" and bool(((starts_t < 0) | (starts_t > last)).any()):
        raise ValueError(f"mel chunk starts must lie in [0, {last}] for T = {mel_t.shape[1]}")
    starts_t = starts_t.to(device)
    if resolve_impl(impl, device) == "torch":
        return mel_chunks_torch(mel_t, starts_t), generator_input_torch(crop_faces_torch(frames, boxes_t))
    _, face = _crop_triton(frames, boxes_t, IMG_SIZE, write_faces=False, write_input=True)
    return _mel_chunks_triton(mel_t, starts_t), face


def crop_faces_torch(frames: torch.Tensor, boxes: torch.Tensor, size: int = IMG_SIZE) -> torch.Tensor:
    """Reference implementation of :func:`crop_faces_device` (gathers + integer arithmetic)."""
    batch, height, width = frames.shape[:3]
    device = frames.device
    y1, y2 = _slice_bound(boxes[:, 0], height), _slice_bound(boxes[:, 1], height)
    x1, x2 = _slice_bound(boxes[:, 2], width), _slice_bound(boxes[:, 3], width)
    ok = (y2 > y1) & (x2 > x1)
    src_h, src_w = (y2 - y1).clamp(min=1), (x2 - x1).clamp(min=1)
    target = torch.full((batch,), size, dtype=torch.int64, device=device)
    cols = linear_taps(src_w, target, size, columns=True)
    rows = linear_taps(src_h, target, size, columns=False)
    item = torch.arange(batch, device=device)[:, None, None]
    r0 = (y1[:, None] + rows.i0).clamp(0, max(height - 1, 0))[:, :, None]
    r1 = (y1[:, None] + rows.i1).clamp(0, max(height - 1, 0))[:, :, None]
    c0 = (x1[:, None] + cols.i0).clamp(0, max(width - 1, 0))[:, None, :]
    c1 = (x1[:, None] + cols.i1).clamp(0, max(width - 1, 0))[:, None, :]
    a0, a1 = cols.w0[:, None, :, None], cols.w1[:, None, :, None]
    h0 = frames[item, r0, c0].to(torch.int32) * a0 + frames[item, r0, c1].to(torch.int32) * a1
    h1 = frames[item, r1, c0].to(torch.int32) * a0 + frames[item, r1, c1].to(torch.int32) * a1
    faces = vertical_pass(h0, h1, rows.w0[:, :, None, None], rows.w1[:, :, None, None])
    return torch.where(ok[:, None, None, None], faces, 0)


def generator_input_torch(faces: torch.Tensor) -> torch.Tensor:
    """(B, 96, 96, 3) uint8 BGR -> (B, 6, 96, 96) float32, as ``faces.generator_inputs``."""
    unit = unit_table(faces.device)[faces.to(torch.int64)]
    masked = unit.clone()
    masked[:, IMG_SIZE // 2 :] = 0.0
    return torch.cat([masked, unit], dim=3).permute(0, 3, 1, 2).contiguous()


def mel_chunks_torch(mel: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """(80, T) mel and (B,) starts -> (B, 1, 80, 16) float32 chunks ``mel[:, s:s + 16]``."""
    columns = starts.to(mel.device)[:, None] + torch.arange(MEL_STEP, device=mel.device)
    return mel[:, columns].permute(1, 0, 2)[:, None].to(torch.float32).contiguous()


def _crop_triton(
    frames: torch.Tensor, boxes: torch.Tensor, size: int, *, write_faces: bool, write_input: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, height, width = frames.shape[:3]
    device = frames.device
    faces = torch.empty((batch, size, size, 3) if write_faces else (0,), dtype=torch.uint8, device=device)
    face_input = torch.empty((batch, 6, size, size) if write_input else (0,), dtype=torch.float32, device=device)
    if batch == 0:
        return faces, face_input
    kernels = triton_kernels(device)
    launch(
        kernels.crop_kernel, (cdiv(size * size, BLOCK), batch),
        frames.contiguous(), boxes.contiguous(), unit_table(device), faces, face_input, height, width,
        SIZE=size, HALF=size // 2, WRITE_FACES=write_faces, WRITE_INPUT=write_input, BLOCK=BLOCK,
    )
    return faces, face_input


def _mel_chunks_triton(mel: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    out = torch.empty((len(starts), 1, N_MELS, MEL_STEP), dtype=torch.float32, device=mel.device)
    if len(starts):
        kernels = triton_kernels(mel.device)
        launch(
            kernels.mel_chunks_kernel, (len(starts),), mel.contiguous(), starts.contiguous(), out, mel.shape[1],
            N_MELS=N_MELS, STEP=MEL_STEP, BLOCK_M=128,
        )
    return out


def _boxes(boxes: BoxesLike, frames: torch.Tensor) -> torch.Tensor:
    """(B, 4) int64 on the frames' device; host boxes are checked here, device boxes are trusted."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"expected (B, H, W, 3) uint8 BGR frames, got {tuple(frames.shape)} {frames.dtype}")
    boxes_t = boxes if isinstance(boxes, torch.Tensor) else torch.as_tensor(np.asarray(boxes, dtype=np.int64))
    boxes_t = boxes_t.to(torch.int64).reshape(-1, 4)
    if boxes_t.shape[0] != frames.shape[0]:
        raise ValueError(f"expected one (y1, y2, x1, x2) box per frame ({frames.shape[0]}), got {boxes_t.shape[0]}")
    if boxes_t.device.type == "cpu" and boxes_t.shape[0]:
        height, width = frames.shape[1:3]
        empty = (_slice_bound(boxes_t[:, 1], height) <= _slice_bound(boxes_t[:, 0], height)) | (
            _slice_bound(boxes_t[:, 3], width) <= _slice_bound(boxes_t[:, 2], width)
        )
        if bool(empty.any()):
            i = int(torch.nonzero(empty)[0])
            box = boxes_t[i].tolist()
            raise ValueError(f"box {box} (y1, y2, x1, x2) selects no pixels of a {width}x{height} frame")
    return boxes_t.to(frames.device)


def _slice_bound(v: torch.Tensor, size: int) -> torch.Tensor:
    """A Python slice bound: negative values count from the end; then clamped to [0, size]."""
    return torch.where(v < 0, v + size, v).clamp(0, size)
