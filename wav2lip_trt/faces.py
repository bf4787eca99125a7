"""Between detection and the generator: 96x96 crops, the masked 6-channel input, and paste-back.

These reproduce the reference's datagen and output loop exactly, including OpenCV's fixed-point
INTER_LINEAR resizes and the uint8 truncation (not rounding) of the prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

IMG_SIZE = 96  # generator input/output side, pixels

_UNIT = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)
"""uint8 -> float32 exactly as the reference's float64 ``x / 255.`` cast to float32."""

Box = tuple[int, int, int, int]
"""(y1, y2, x1, x2) in frame pixels: the reference's coordinate order for crops and paste-back."""


def crop_faces(frames: Sequence[np.ndarray], boxes: Sequence[Box], out: np.ndarray | None = None) -> np.ndarray:
    """(B, 96, 96, 3) uint8 BGR: each frame's box, resized with OpenCV INTER_LINEAR (into ``out`` if given)."""
    if out is None:
        out = np.empty((len(frames), IMG_SIZE, IMG_SIZE, 3), dtype=np.uint8)
    for i, (frame, (y1, y2, x1, x2)) in enumerate(zip(frames, boxes)):
        out[i] = cv2.resize(frame[y1:y2, x1:x2], (IMG_SIZE, IMG_SIZE))
    return out


def generator_inputs(faces: np.ndarray, mels: np.ndarray, out: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Wav2Lip feed: mel (B, 1, 80, 16) float32 and face (B, 6, 96, 96) float32 in [0, 1].

    The face's channels are ``[masked B, G, R, reference B, G, R]``; masked = rows 48..95 zeroed.
    Both tensors keep the reference's strides (NHWC arrays, transposed): CPU convolutions choose
    their algorithm by memory format, and the low-order bits follow. ``out`` is a contiguous
    (B, 96, 96, 6) float32 array to build the face in (a reused buffer; same strides).
    """
    if out is None:
        out = np.empty((len(faces), IMG_SIZE, IMG_SIZE, 6), dtype=np.float32)
    np.take(_UNIT, faces, out=out[..., 3:], mode="clip")  # uint8 indices of a 256-entry table: never clipped
    out[..., :3] = out[..., 3:]
    out[:, IMG_SIZE // 2 :, :, :3] = 0.0
    face = torch.from_numpy(out).permute(0, 3, 1, 2)
    mels = np.ascontiguousarray(mels, dtype=np.float32)
    mel = torch.from_numpy(mels.reshape(*mels.shape, 1)).permute(0, 3, 1, 2)
    return mel, face


def prediction_to_uint8(pred: np.ndarray) -> np.ndarray:
    """(B, 3, 96, 96) float32 in [0, 1] -> (B, 96, 96, 3) uint8, truncating like the reference."""
    return (pred.transpose(0, 2, 3, 1) * np.float32(255.0)).astype(np.uint8)


def paste_back(frame: np.ndarray, face: np.ndarray, box: Box, scratch: np.ndarray | None = None) -> None:
    """Resize the generated face to the box and overwrite the whole box in ``frame`` (in place).

    ``scratch``: a contiguous (y2 - y1, x2 - x1, 3) uint8 array for the resized face (reused, so a
    large box costs no fresh pages).
    """
    y1, y2, x1, x2 = box
    frame[y1:y2, x1:x2] = cv2.resize(face, (x2 - x1, y2 - y1), dst=scratch)
