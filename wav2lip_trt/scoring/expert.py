"""The lip-sync expert's and the quality discriminator's view of generated faces.

Faces are what ``inference.py`` pastes: ``(pred.transpose(0, 2, 3, 1) * 255.).astype(np.uint8)``,
a float32 multiply and a truncating cast. Expert window i is frames i..i+4, lower halves (rows
48-95), divided by 255, channels time-major (B0 G0 R0 B1 ... R4): the layout of both
``color_syncnet_train.Dataset`` and ``wav2lip_train.get_sync_loss``. Its audio is mel chunk i
(the one that starts at frame i, not centred). The loss is upstream ``cosine_loss``: binary cross
entropy of the cosine similarity against 1, with the log clamped at -100.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

FACE_SIZE = 96  # Wav2Lip face side
LOWER_HALF = FACE_SIZE // 2  # first row of the lower half
WINDOW = 5  # faces per expert window
BCE_LOG_FLOOR = -100.0  # torch.nn.BCELoss clamps log(p) here


def faces_to_uint8(faces: np.ndarray | torch.Tensor) -> np.ndarray:
    """(B, 96, 96, 3) uint8 BGR faces, from pasted faces or from generator output.

    uint8 input of that shape is taken as is; a float (B, 3, 96, 96) generator output in [0, 1] is
    transposed, multiplied by 255 in float32 and truncated, as ``inference.py`` does it.
    """
    if isinstance(faces, torch.Tensor):
        faces = faces.detach().cpu().numpy()
    faces = np.asarray(faces)
    if faces.dtype == np.uint8:
        if faces.ndim != 4 or faces.shape[1:] != (FACE_SIZE, FACE_SIZE, 3):
            raise ValueError(f"expected (B, {FACE_SIZE}, {FACE_SIZE}, 3) uint8 faces, got {faces.shape}")
        return faces
    if faces.ndim != 4 or faces.shape[1:] != (3, FACE_SIZE, FACE_SIZE) or not np.issubdtype(faces.dtype, np.floating):
        raise ValueError(f"expected (B, 3, {FACE_SIZE}, {FACE_SIZE}) float predictions, got {faces.shape} {faces.dtype}")
    return (faces.astype(np.float32).transpose(0, 2, 3, 1) * np.float32(255.0)).astype(np.uint8)


def faces_to_unit(faces_u8: np.ndarray) -> torch.Tensor:
    """(B, 3, 96, 96) float32 ``faces / 255.`` (divided in float64, then cast, as numpy did upstream)."""
    return torch.from_numpy((faces_u8.transpose(0, 3, 1, 2) / 255.0).astype(np.float32))


def expert_windows(lower: torch.Tensor) -> torch.Tensor:
    """(N - 4, 15, 48, 96) windows from (N, 3, 48, 96) consecutive lower halves, time-major channels."""
    if lower.dim() != 4 or lower.shape[0] < WINDOW:
        raise ValueError(f"expected at least {WINDOW} lower halves (N, 3, 48, 96), got {tuple(lower.shape)}")
    steps = lower.unfold(0, WINDOW, 1)  # (W, 3, 48, 96, 5)
    return steps.permute(0, 4, 1, 2, 3).reshape(steps.shape[0], 3 * WINDOW, *lower.shape[2:])


def cosine_loss_terms(audio: torch.Tensor, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarity, bce) per row: upstream ``cosine_loss(a, v, ones)`` before its mean."""
    d = F.cosine_similarity(audio, face)
    return d, -torch.clamp(torch.log(d), min=BCE_LOG_FLOOR)


def quality_probabilities(disc: Callable[[torch.Tensor], torch.Tensor], faces_unit: torch.Tensor) -> torch.Tensor:
    """(B,) ``Wav2Lip_disc_qual.forward`` on (B, 3, 1, 96, 96): one probability per face, lower half only."""
    return disc(faces_unit[:, :, None]).reshape(-1)
