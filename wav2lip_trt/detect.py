"""S3FD face detection: pre-processing, box decoding, NMS and the per-frame face choice.

Everything after the network reproduces the original Wav2Lip ``batch_detect`` /
``detect_from_batch`` / ``get_detections_for_batch`` bit for bit (float32 torch for the
decode, float32 numpy for NMS), including its batch-dependent candidate list, so the chosen
boxes can be compared exactly with the reference. It is vectorised over anchors instead of
looping over them in Python.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .runners.base import S3FD_INPUTS, S3FD_OUTPUTS, Runner
from .stages import StageTimes

S3FD_MEAN_RGB = (104, 117, 123)
"""Per-channel means (R, G, B) subtracted from the 0-255 pixels; no scaling."""

CANDIDATE_THRESHOLD = 0.05  # score a position needs (in any image of the batch) to be decoded
NMS_THRESHOLD = 0.3  # IoU above which a lower-scored box is suppressed
FACE_THRESHOLD = 0.5  # score a box needs after NMS to count as a face
VARIANCES = (0.1, 0.2)  # SSD box-coding variances for (centre, size)

Box = tuple[int, int, int, int]
"""(x1, y1, x2, y2) in pixels, clipped at 0 from below only (x2/y2 may exceed the frame)."""

MIN_FRAME_SIDE = 32
"""Smallest frame height and width S3FD runs on: its five 2x2 max-pools need 32 pixels (31 leaves an
empty map in pool5; tried side by side from 1 to 40). The engines' ``MIN_S3FD_SIDE`` is the same."""


def check_frame_size(width: int, height: int, where: str = "frame") -> None:
    """Raise :class:`InputError` for a frame too small for S3FD, suggesting a fixed ``--box``."""
    if min(width, height) < MIN_FRAME_SIDE:
        raise InputError(
            f"{where}: too small for the S3FD face detector, which needs at least {MIN_FRAME_SIDE}x"
            f"{MIN_FRAME_SIDE} pixels; give the face box with --box y1 y2 x1 x2 to skip detection"
        )


def preprocess(frames: np.ndarray) -> torch.Tensor:
    """Turn a batch of BGR frames into the S3FD input the original feeds its network.

    The original flips BGR to RGB and subtracts the means in integer arithmetic before the
    float cast, at full resolution; the values are therefore exact integers in float32.

    frames: (B, H, W, 3) uint8 BGR. Returns (B, 3, H, W) float32 RGB minus the means.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        got = f"{frames.shape} {frames.dtype}"
        raise ValueError(f"expected (B, H, W, 3) uint8 BGR frames, got {got}")
    rgb = torch.from_numpy(np.ascontiguousarray(frames[..., ::-1]))
    mean = torch.tensor(S3FD_MEAN_RGB, dtype=torch.int16)
    return (rgb.to(torch.int16) - mean).to(torch.float32).permute(0, 3, 1, 2)


def decode_candidates(outputs: Sequence[torch.Tensor]) -> np.ndarray:
    """Decode the raw S3FD outputs into the original's candidate array ``bboxlist``.

    A position becomes a candidate row once for every image whose score passes there, and
    each row carries the box and score of every image; this makes the per-image candidate
    lists (and hence NMS tie-breaking) identical to the original's for the same batch.

    outputs: cls1, reg1, ..., cls6, reg6 as (B, 2, H, W) / (B, 4, H, W) tensors, cls without
    softmax; decoded in float32 on the CPU, where the reference bits are defined.
    Returns (K, B, 5) float32 rows of (x1, y1, x2, y2, score); when no position passes, the
    original's single all-zero row (1, B, 5).
    """
    if len(outputs) != len(S3FD_OUTPUTS):
        raise ValueError(f"expected {len(S3FD_OUTPUTS)} S3FD outputs, got {len(outputs)}")
    batch = outputs[0].shape[0]
    rows = []
    for level in range(len(outputs) // 2):
        cls = outputs[2 * level].to("cpu", torch.float32).contiguous()
        reg = outputs[2 * level + 1].to("cpu", torch.float32)
        score = F.softmax(cls, dim=1)[:, 1]
        passing = torch.nonzero(score > CANDIDATE_THRESHOLD)
        if len(passing) == 0:
            continue
        hs, ws = passing[:, 1], passing[:, 2]
        stride = 2 ** (level + 2)
        centre = torch.stack([ws * stride + stride // 2, hs * stride + stride // 2], dim=1)
        size = torch.full_like(centre, 4 * stride)
        priors = torch.cat([centre, size], dim=1).to(torch.float32)[:, None, :]  # (K, 1, 4)
        loc = reg[:, :, hs, ws].permute(2, 0, 1)  # (K, B, 4)
        boxes = decode_boxes(loc, priors)
        rows.append(torch.cat([boxes, score[:, hs, ws].T[:, :, None]], dim=2).numpy())
    if not rows:
        return np.zeros((1, batch, 5), dtype=np.float32)
    return np.concatenate(rows, axis=0)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """SSD decode in the original's float32 operation order (same rounding, same bits)."""
    boxes = torch.cat(
        (
            priors[..., :2] + loc[..., :2] * VARIANCES[0] * priors[..., 2:],
            priors[..., 2:] * torch.exp(loc[..., 2:] * VARIANCES[1]),
        ),
        dim=-1,
    )
    boxes[..., :2] -= boxes[..., 2:] / 2
    boxes[..., 2:] += boxes[..., :2]
    return boxes


def nms(dets: np.ndarray, thresh: float = NMS_THRESHOLD) -> list[int]:
    """Greedy NMS with the original's ``+1`` pixel convention and unstable argsort order.

    dets: (K, 5) float32 rows (x1, y1, x2, y2, score). Returns the kept row indices, best
    first. Kept exactly as the original computes it (float32, ``IoU <= thresh`` survives)
    because ties and near-threshold overlaps decide which box wins.
    """
    if len(dets) == 0:
        return []
    x1, y1, x2, y2, scores = (dets[:, j] for j in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[overlap <= thresh]
    return keep


def detections_per_image(outputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """All faces per image after NMS and the 0.5 score cut, best first, as the original has them.

    Slower than :func:`choose_faces`; meant for parity reports that compare whole lists.
    Returns one (k, 5) float32 array per image.
    """
    candidates = decode_candidates(outputs)
    result = []
    for i in range(candidates.shape[1]):
        dets = candidates[:, i, :]
        kept = dets[nms(dets)]
        result.append(kept[kept[:, 4] > FACE_THRESHOLD])
    return result


def choose_faces(outputs: Sequence[torch.Tensor]) -> list[Box | None]:
    """The one face per image the original keeps: its first box after NMS, clipped and truncated.

    NMS always keeps the top of ``argsort()[::-1]`` first and the later kept boxes score no
    higher, so the first surviving box is that top candidate if it scores above 0.5 and there
    is none otherwise. A NaN score breaks that ordering argument, so such images take the
    full NMS path.
    """
    candidates = decode_candidates(outputs)
    faces: list[Box | None] = []
    for i in range(candidates.shape[1]):
        dets = candidates[:, i, :]
        scores = dets[:, 4]
        if np.isnan(scores).any():
            kept = dets[nms(dets)]
            kept = kept[kept[:, 4] > FACE_THRESHOLD]
            best = kept[0] if len(kept) else None
        else:
            top = dets[scores.argsort()[::-1][0]]
            best = top if top[4] > FACE_THRESHOLD else None
        faces.append(None if best is None else _to_box(best))
    return faces


def _to_box(det: np.ndarray) -> Box:
    x1, y1, x2, y2 = (int(v) for v in np.clip(det, 0, None)[:4])
    return x1, y1, x2, y2


def run_detector(runner: Runner, frames: np.ndarray, times: StageTimes) -> list[Box | None]:
    """S3FD on the host path: reference preprocessing, the runner, reference post-processing."""
    with times.stage("detect", len(frames)):
        out = runner.infer({S3FD_INPUTS[0]: preprocess(frames)})
        outputs = [out[name].detach().to("cpu", torch.float32) for name in S3FD_OUTPUTS]
    with times.stage("postprocess", len(frames)):
        return choose_faces(outputs)


class FaceDetector:
    """The detection stage: frames in, one face box (or None) per frame out, via any runner.

    On an out-of-memory error the batch is retried in halves, and the smaller size is kept
    for later calls, as the original keeps its halved batch size for the rest of the video.
    """

    def __init__(self, runner: Runner, times: StageTimes | None = None, ops: object | None = None) -> None:
        """``ops`` is a :class:`wav2lip_trt.frame_ops.FrameOps`; by default the exact host path."""
        self.runner = runner
        self.times = times if times is not None else StageTimes()
        self._detect = getattr(ops, "detect", run_detector)
        self.max_batch: int | None = None  # frames per forward; None = the whole call, set on OOM

    def detect(self, frames: np.ndarray) -> list[Box | None]:
        """frames: (B, H, W, 3) uint8 BGR, all the same size. Returns B boxes in frame order."""
        if len(frames):
            check_frame_size(int(frames.shape[2]), int(frames.shape[1]), f"a {frames.shape[2]}x{frames.shape[1]} frame")
        faces: list[Box | None] = []
        start = 0
        while start < len(frames):
            size = len(frames) - start if self.max_batch is None else self.max_batch
            chunk = frames[start : start + size]
            try:
                faces.extend(self._detect_batch(chunk))
            except RuntimeError as err:
                if "out of memory" not in str(err).lower() or len(chunk) == 1:
                    raise
                self.max_batch = (len(chunk) + 1) // 2
                self._release_cache()
                continue
            start += len(chunk)
        return faces

    def _detect_batch(self, frames: np.ndarray) -> list[Box | None]:
        return self._detect(self.runner, frames, self.times)

    def _release_cache(self) -> None:
        device = getattr(self.runner, "device", None)
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
