"""S3FD post-processing on device: the chosen face per frame, and the full NMS detection lists.

The reference keeps the first box after NMS, and NMS always keeps the top-scoring candidate,
so the chosen face is the best-scoring position if its score exceeds 0.5. The fused path finds
that position with a two-stage argmax over all six levels and decodes only the winner.

Ordering: the position with the largest logit margin ``c1 - c0`` wins; ties go to the first
position in (level, row, column) order. The softmax score is a monotone function of that margin,
so the winner always has the reference's top score. The reference breaks exact score ties
(common once confident scores saturate near 1.0 in float32) with numpy's unstable
``argsort``, whose order depends on the array length and the CPU's SIMD sort; there the device
picks the most confident of the tied positions, which is one of the boxes the reference may
return, not necessarily the same one. Without a tie the boxes are identical.

Images with a NaN score anywhere (NaN logits, or an infinite larger logit) take the full NMS
path, which reproduces the reference's handling of NaN candidate rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..detect import CANDIDATE_THRESHOLD, FACE_THRESHOLD, NMS_THRESHOLD, Box, decode_boxes
from ..runners.base import S3FD_OUTPUTS
from .backend import Impl, cdiv, launch, resolve_impl, triton_kernels

LEVELS = 6
BLOCK = 1024  # positions per program in the argmax stage
BLOCK_CHUNKS = 256  # chunk winners reduced per step in the final stage
NMS_MAX_TRITON = 4096  # candidates per image above which NMS runs the torch reference instead


@dataclass(frozen=True)
class DeviceFaces:
    """One face box (or none) per frame, on the device of the network outputs."""

    boxes: torch.Tensor  # (B, 4) int64 x1, y1, x2, y2: clipped at 0 from below, truncated; 0 if not found
    found: torch.Tensor  # (B,) bool; False where the reference raises "Face not detected"

    def to_list(self) -> list[Box | None]:
        """The same values as :func:`wav2lip_trt.detect.choose_faces` returns (one device sync)."""
        boxes = self.boxes.cpu().tolist()
        return [tuple(box) if hit else None for box, hit in zip(boxes, self.found.cpu().tolist())]


def choose_faces_device(outputs: Sequence[torch.Tensor], *, impl: Impl = "auto") -> DeviceFaces:
    """The face per image that ``detect.choose_faces`` keeps, computed where the outputs are.

    outputs: cls1, reg1, ..., cls6, reg6 as (B, 2, H, W) / (B, 4, H, W) float32 or float16
    tensors without softmax. Costs one device sync (to see whether any image needs the NMS path).
    """
    levels = _levels(outputs)
    device = levels[0][0].device
    if resolve_impl(impl, device) == "torch":
        faces, needs_nms = _choose_torch(levels)
    else:
        faces, needs_nms = _choose_triton(levels)
    if not bool(needs_nms.any()):
        return faces
    boxes, found = faces.boxes.clone(), faces.found.clone()
    for i, dets in enumerate(detections_device(outputs, impl=impl)):
        if bool(needs_nms[i]):
            found[i] = len(dets) > 0
            boxes[i] = _truncate(dets[0, :4]) if len(dets) else 0
    return DeviceFaces(boxes, found)


def choose_faces_packed(outputs: Sequence[torch.Tensor], *, impl: Impl = "auto") -> torch.Tensor:
    """:func:`choose_faces_device` without its device sync: (B, 6) int64 rows on the outputs' device.

    Each row is ``x1, y1, x2, y2, found, needs_nms``; the caller copies the rows to the host once
    (with an event) and finishes the rare NaN images with :func:`finish_packed`.
    """
    levels = _levels(outputs)
    device = levels[0][0].device
    faces, needs_nms = (_choose_torch if resolve_impl(impl, device) == "torch" else _choose_triton)(levels)
    return torch.cat([faces.boxes, faces.found[:, None].to(torch.int64), needs_nms[:, None].to(torch.int64)], dim=1)


def finish_packed(outputs: Sequence[torch.Tensor], rows: Sequence[Sequence[int]], *, impl: Impl = "auto") -> list[Box | None]:
    """Boxes from host copies of :func:`choose_faces_packed` rows; images with NaN scores take full NMS."""
    faces: list[Box | None] = [tuple(int(v) for v in row[:4]) if row[4] else None for row in rows]  # type: ignore[misc]
    if any(row[5] for row in rows):
        for i, dets in enumerate(detections_device(outputs, impl=impl)):
            if rows[i][5]:
                faces[i] = tuple(int(v) for v in _truncate(dets[0, :4]).tolist()) if len(dets) else None  # type: ignore[assignment]
    return faces


def choose_faces_torch(outputs: Sequence[torch.Tensor]) -> DeviceFaces:
    """Reference implementation of :func:`choose_faces_device` with plain torch ops."""
    return choose_faces_device(outputs, impl="torch")


def detections_device(outputs: Sequence[torch.Tensor], *, impl: Impl = "auto") -> list[torch.Tensor]:
    """All faces per image after NMS and the 0.5 cut, best first, as ``detect.detections_per_image``.

    Only candidates scoring above 0.5 (or NaN, which sorts first) can influence the kept faces:
    NMS suppresses only later, lower-scored boxes. Those rows are selected with the reference's
    batch-wide candidate rule, decoded, sorted (stable: score ties keep position order) and
    passed to :func:`nms_sorted`. Returns one (k, 5) float32 tensor (x1, y1, x2, y2, score) per image.
    """
    levels = _levels(outputs)
    batch = levels[0][0].shape[0]
    device = levels[0][0].device
    images, scores, boxes = [], [], []
    for level, (cls, reg) in enumerate(levels):
        score = F.softmax(cls, dim=1)[:, 1]
        union = (score > CANDIDATE_THRESHOLD).any(dim=0)
        rows = torch.nonzero(union[None] & ((score > FACE_THRESHOLD) | torch.isnan(score)))
        b, h, w = rows.unbind(1)
        stride = 2 ** (level + 2)
        images.append(b)
        scores.append(score[b, h, w])
        boxes.append(decode_boxes(reg[b, :, h, w], _priors(h, w, stride)))
    image = torch.cat(images)
    score = torch.cat(scores)
    box = torch.cat(boxes)
    order = torch.sort(score, descending=True, stable=True).indices
    order = order[torch.sort(image[order], stable=True).indices]
    image, score, box = image[order], score[order], box[order]
    counts = torch.bincount(image, minlength=batch)
    width = int(counts.max()) if len(image) else 0
    slot = torch.arange(len(image), device=device) - (torch.cumsum(counts, 0) - counts)[image]
    padded = torch.zeros((batch, width, 4), dtype=torch.float32, device=device)
    padded[image, slot] = box
    keep = nms_sorted(padded, counts, impl=impl)[image, slot] & (score > FACE_THRESHOLD)
    kept = torch.cat([box, score[:, None]], dim=1)[keep]
    return list(torch.split(kept, torch.bincount(image[keep], minlength=batch).tolist()))


def nms_sorted(
    boxes: torch.Tensor, counts: torch.Tensor, threshold: float = NMS_THRESHOLD, *, impl: Impl = "auto"
) -> torch.Tensor:
    """Batched greedy NMS with the reference's numpy arithmetic, on score-sorted boxes.

    boxes: (B, K, 4) float32 x1, y1, x2, y2, each image's rows best first; counts: (B,) valid rows.
    IoU uses ``(x2 - x1 + 1) * (y2 - y1 + 1)`` areas and a box survives while IoU <= threshold
    (float32) with every kept box, so NaN coordinates suppress. Returns keep (B, K) bool.
    """
    if boxes.ndim != 3 or boxes.shape[2] != 4 or counts.shape != boxes.shape[:1]:
        raise ValueError(f"expected (B, K, 4) boxes and (B,) counts, got {tuple(boxes.shape)}, {tuple(counts.shape)}")
    batch, width = boxes.shape[:2]
    boxes = boxes.to(torch.float32).contiguous()
    if width == 0 or batch == 0:
        return torch.zeros((batch, width), dtype=torch.bool, device=boxes.device)
    if resolve_impl(impl, boxes.device) == "torch" or width > NMS_MAX_TRITON:
        return nms_sorted_torch(boxes, counts, threshold)
    keep = torch.empty((batch, width), dtype=torch.int8, device=boxes.device)
    kernels = triton_kernels(boxes.device)
    block = max(16, 1 << (width - 1).bit_length())
    counts32 = counts.to(device=boxes.device, dtype=torch.int32).contiguous()
    launch(kernels.nms_kernel, (batch,), boxes, counts32, keep, width, float(threshold), BLOCK_K=block)
    return keep.bool()


def nms_sorted_torch(boxes: torch.Tensor, counts: torch.Tensor, threshold: float = NMS_THRESHOLD) -> torch.Tensor:
    """Reference implementation of :func:`nms_sorted`: an IoU matrix and a loop over rows."""
    batch, width = boxes.shape[:2]
    device = boxes.device
    x1, y1, x2, y2 = boxes.to(torch.float32).unbind(2)
    area = ((x2 - x1) + 1) * ((y2 - y1) + 1)
    w = (torch.minimum(x2[:, :, None], x2[:, None, :]) - torch.maximum(x1[:, :, None], x1[:, None, :])) + 1
    h = (torch.minimum(y2[:, :, None], y2[:, None, :]) - torch.maximum(y1[:, :, None], y1[:, None, :])) + 1
    inter = torch.where(w < 0, 0.0, w) * torch.where(h < 0, 0.0, h)
    overlap = inter / ((area[:, :, None] + area[:, None, :]) - inter)
    suppress = ~(overlap <= torch.tensor(threshold, dtype=torch.float32, device=device))
    valid = torch.arange(width, device=device)[None, :] < counts.to(device)[:, None]
    removed = torch.zeros((batch, width), dtype=torch.bool, device=device)
    keep = torch.zeros((batch, width), dtype=torch.bool, device=device)
    for i in range(width):
        kept = valid[:, i] & ~removed[:, i]
        keep[:, i] = kept
        removed |= kept[:, None] & suppress[:, i, :]
    return keep


def nms_indices(dets: torch.Tensor, threshold: float = NMS_THRESHOLD, *, impl: Impl = "auto") -> torch.Tensor:
    """``detect.nms`` on one (K, 5) array of unsorted rows: kept row indices, best first.

    Sorted like the reference's ``argsort()[::-1]`` (NaN first) except that equal scores keep
    their row order.
    """
    order = torch.sort(dets[:, 4].to(torch.float32), descending=True, stable=True).indices
    counts = torch.tensor([len(dets)], device=dets.device)
    keep = nms_sorted(dets[order, :4][None], counts, threshold, impl=impl)[0]
    return order[keep]


def _levels(outputs: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if len(outputs) != len(S3FD_OUTPUTS):
        raise ValueError(f"expected {len(S3FD_OUTPUTS)} S3FD outputs, got {len(outputs)}")
    levels = []
    for level in range(LEVELS):
        cls, reg = outputs[2 * level], outputs[2 * level + 1]
        if cls.ndim != 4 or cls.shape[1] != 2 or reg.shape != (cls.shape[0], 4, *cls.shape[2:]):
            raise ValueError(
                f"level {level + 1}: expected cls (B, 2, H, W) and reg (B, 4, H, W), "
                f"got {tuple(cls.shape)} and {tuple(reg.shape)}"
            )
        levels.append((cls.to(torch.float32).contiguous(), reg.to(torch.float32).contiguous()))
    batch = {cls.shape[0] for cls, _ in levels}
    devices = {cls.device for pair in levels for cls in pair}
    if len(batch) != 1 or len(devices) != 1:
        raise ValueError("all S3FD outputs must share the batch size and the device")
    return levels


def _choose_torch(levels: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[DeviceFaces, torch.Tensor]:
    batch = levels[0][0].shape[0]
    scores = torch.cat([F.softmax(cls, dim=1)[:, 1].reshape(batch, -1) for cls, _ in levels], dim=1)
    margins = torch.cat([(cls[:, 1] - cls[:, 0]).reshape(batch, -1) for cls, _ in levels], dim=1)
    needs_nms = torch.isnan(scores).any(dim=1)
    best = torch.where(torch.isnan(margins), float("-inf"), margins).argmax(dim=1)
    found = scores.gather(1, best[:, None])[:, 0] > FACE_THRESHOLD
    loc = torch.zeros((batch, 4), dtype=torch.float32, device=best.device)
    priors = torch.zeros((batch, 4), dtype=torch.float32, device=best.device)
    offset = 0
    for level, (_, reg) in enumerate(levels):
        height, width = reg.shape[2:]
        count = height * width
        here = (best >= offset) & (best < offset + count)
        pos = (best - offset).clamp(0, max(count - 1, 0))
        if count:
            loc_here = reg.reshape(batch, 4, count).gather(2, pos[:, None, None].expand(batch, 4, 1))[:, :, 0]
            loc = torch.where(here[:, None], loc_here, loc)
            priors = torch.where(here[:, None], _priors(pos // width, pos % width, 2 ** (level + 2)), priors)
        offset += count
    boxes = _truncate(decode_boxes(loc, priors))
    boxes = torch.where(found[:, None], boxes, 0)
    return DeviceFaces(boxes, found), needs_nms


def _choose_triton(levels: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[DeviceFaces, torch.Tensor]:
    batch = levels[0][0].shape[0]
    device = levels[0][0].device
    sizes = [cls.shape[2] * cls.shape[3] for cls, _ in levels]
    widths = [cls.shape[3] for cls, _ in levels]
    ends = []
    for size in sizes:
        ends.append((ends[-1] if ends else 0) + cdiv(size, BLOCK))
    chunks = ends[-1]
    boxes = torch.zeros((batch, 4), dtype=torch.int64, device=device)
    found = torch.zeros(batch, dtype=torch.int8, device=device)
    bad = torch.zeros(batch, dtype=torch.int8, device=device)
    if batch == 0 or chunks == 0:
        return DeviceFaces(boxes, found.bool()), bad.bool()
    part_margin = torch.empty((batch, chunks), dtype=torch.float32, device=device)
    part_index = torch.empty((batch, chunks), dtype=torch.int32, device=device)
    part_bad = torch.empty((batch, chunks), dtype=torch.int8, device=device)
    kernels = triton_kernels(device)
    cls = [c for c, _ in levels]
    reg = [r for _, r in levels]
    launch(
        kernels.s3fd_best_kernel, (chunks, batch), *cls, *sizes, *ends[:5],
        part_margin, part_index, part_bad, chunks, BLOCK=BLOCK,
    )
    launch(
        kernels.s3fd_choose_kernel, (batch,), part_margin, part_index, part_bad, chunks,
        *reg, *sizes, *widths, boxes, found, bad, BLOCK_K=BLOCK_CHUNKS,
    )
    return DeviceFaces(boxes, found.bool()), bad.bool()


def _priors(h: torch.Tensor, w: torch.Tensor, stride: int | torch.Tensor) -> torch.Tensor:
    """(N, 4) float32 prior boxes (cx, cy, 4s, 4s) at integer map positions, as the reference builds them."""
    centre = torch.stack([w * stride + stride // 2, h * stride + stride // 2], dim=1)
    return torch.cat([centre, torch.full_like(centre, 4 * stride)], dim=1).to(torch.float32)



def _truncate(boxes: torch.Tensor) -> torch.Tensor:
    """``int()`` of ``np.clip(box, 0, None)``: clip below at 0, then truncate."""
    return boxes.clamp(min=0).to(torch.int64)
