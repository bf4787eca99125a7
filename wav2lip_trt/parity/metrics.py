"""``parity``'s metrics: Polygraphy-style error statistics of tensors and the per-frame IoU of chosen boxes.

An element passes when ``|out - ref| <= atol`` or ``|out - ref| <= rtol * |ref|``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .options import SAME_FACE_IOU, Box


def abs_rel_errors(reference: np.ndarray, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise |out - ref| and |out - ref| / |ref| as flat float64 arrays.

    Equal values (NaN and NaN included) have error 0; a value that is NaN or infinite on one side
    only has infinite error, so it can never pass. Where ref is 0 the relative error of a
    nonzero difference is infinite (only ``atol`` can pass it).
    """
    ref = np.asarray(reference, dtype=np.float64).ravel()
    out = np.asarray(output, dtype=np.float64).ravel()
    if ref.shape != out.shape:
        raise ValueError(f"shapes differ: {np.shape(reference)} vs {np.shape(output)}")
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        diff = np.abs(out - ref)
        diff[(out == ref) | (np.isnan(out) & np.isnan(ref))] = 0.0
        diff[np.isnan(diff)] = np.inf
        rel = np.where(diff == 0.0, 0.0, diff / np.abs(ref))
    rel[np.isnan(rel)] = np.inf
    return diff, rel


def required_tolerances(abs_err: np.ndarray, rel_err: np.ndarray, atol: float, rtol: float) -> tuple[float, float]:
    """The smallest atol that passes at this rtol, and the smallest rtol that passes at this atol.

    Either one passing means the whole tensor passes: ``required_atol <= atol`` exactly when
    ``required_rtol <= rtol``.
    """
    need_atol = abs_err[rel_err > rtol]
    need_rtol = rel_err[abs_err > atol]
    return (float(need_atol.max()) if need_atol.size else 0.0, float(need_rtol.max()) if need_rtol.size else 0.0)


def psnr(reference: np.ndarray, output: np.ndarray, peak: float) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    diff, _ = abs_rel_errors(reference, output)
    if diff.size == 0:
        return math.inf
    mse = float(np.mean(diff**2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)


def box_iou(a: Box | None, b: Box | None) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; two missing boxes agree (1.0)."""
    if a is None or b is None:
        return 1.0 if a is None and b is None else 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0, iw) * max(0, ih)
    area_a = max(0, a[2] - a[0]) * max(0, a[3] - a[1])
    area_b = max(0, b[2] - b[0]) * max(0, b[3] - b[1])
    union = area_a + area_b - inter
    if union <= 0:
        return 1.0 if tuple(a) == tuple(b) else 0.0
    return inter / union


@dataclass(frozen=True)
class TensorComparison:
    """One output of one check: the error statistics and the verdict at the rung's tolerances."""

    name: str
    shape: tuple[int, ...]
    elements: int  # compared elements (0 when nothing could be compared)
    max_abs: float
    mean_abs: float
    median_abs: float
    p99_abs: float
    max_rel: float
    mean_rel: float
    median_rel: float
    p99_rel: float
    atol: float
    rtol: float
    required_atol: float  # smallest atol that would have passed at this rtol
    required_rtol: float  # smallest rtol that would have passed at this atol
    psnr_db: float | None = None  # images only
    error: str | None = None  # why the outputs could not be compared (shapes differ)

    @property
    def passed(self) -> bool:
        return self.error is None and self.required_atol <= self.atol

    def describe_failure(self) -> str:
        if self.error is not None:
            return f"{self.name}: {self.error}"
        return (f"{self.name} max abs error {_num(self.max_abs)} (needs atol {_num(self.required_atol)} "
                f"at rtol {_num(self.rtol)}, or rtol {_num(self.required_rtol)} at atol {_num(self.atol)})")


def compare_tensors(name: str, reference: np.ndarray, output: np.ndarray, *, atol: float, rtol: float,
                    peak: float | None = None) -> TensorComparison:
    """Compare ``output`` with ``reference``; ``peak`` (1.0, 255) adds a PSNR for images."""
    shape = tuple(np.shape(reference))
    if shape != tuple(np.shape(output)):
        nan = math.nan
        return TensorComparison(
            name, shape, elements=0, max_abs=nan, mean_abs=nan, median_abs=nan, p99_abs=nan, max_rel=nan, mean_rel=nan,
            median_rel=nan, p99_rel=nan, atol=atol, rtol=rtol, required_atol=math.inf, required_rtol=math.inf,
            error=f"shape {tuple(np.shape(output))} differs from the reference's {shape}",
        )
    abs_err, rel_err = abs_rel_errors(reference, output)
    need_atol, need_rtol = required_tolerances(abs_err, rel_err, atol, rtol)
    stats = [_stats(abs_err), _stats(rel_err)]
    return TensorComparison(
        name, shape, int(abs_err.size), *stats[0], *stats[1], atol, rtol, need_atol, need_rtol,
        None if peak is None else psnr(reference, output, peak),
    )


def _stats(values: np.ndarray) -> tuple[float, float, float, float]:
    """max, mean, median, p99 (an actual element, so infinities never turn into NaN)."""
    if values.size == 0:
        return 0.0, 0.0, 0.0, 0.0
    with np.errstate(invalid="ignore"):
        return (float(values.max()), float(values.mean()), float(np.median(values)),
                float(np.percentile(values, 99, method="higher")))


@dataclass(frozen=True)
class BoxComparison:
    """The face chosen per frame by the reference and by a rung."""

    name: str
    ious: tuple[float, ...]  # per frame; 1.0 where neither found a face
    changed: int  # frames whose box is not identical
    differs: int  # frames whose chosen face differs: found by one side only, or IoU < SAME_FACE_IOU
    allowed_differs: int
    min_iou: float  # over the frames where the face is the same (1.0 if there are none)
    mean_iou: float
    required_min_iou: float

    @property
    def frames(self) -> int:
        return len(self.ious)

    @property
    def passed(self) -> bool:
        return self.differs <= self.allowed_differs and self.min_iou >= self.required_min_iou

    def describe_failure(self) -> str:
        parts = []
        if self.differs > self.allowed_differs:
            parts.append(f"the chosen face differs in {self.differs} of {self.frames} frames "
                         f"(allowed {self.allowed_differs})")
        if self.min_iou < self.required_min_iou:
            parts.append(f"min IoU {self.min_iou:.3f} < {self.required_min_iou:g}")
        return f"{self.name}: " + ", ".join(parts)


def _key(box: Box | None) -> tuple[int, ...] | None:
    return None if box is None else tuple(int(v) for v in box)


def compare_boxes(name: str, reference: Sequence[Box | None], boxes: Sequence[Box | None], *, min_iou: float,
                  max_face_changes: float) -> BoxComparison:
    """Per-frame IoU of the chosen faces, and how many frames chose a different face."""
    if len(reference) != len(boxes):
        raise ValueError(f"{name}: {len(boxes)} boxes vs the reference's {len(reference)}")
    ious = tuple(box_iou(a, b) for a, b in zip(reference, boxes))
    same = [iou for iou in ious if iou >= SAME_FACE_IOU]
    changed = sum(1 for a, b in zip(reference, boxes) if _key(a) != _key(b))
    return BoxComparison(
        name, ious, changed, len(ious) - len(same), int(math.floor(max_face_changes * len(ious) + 1e-9)),
        min(same, default=1.0), float(np.mean(ious)) if ious else 1.0, min_iou,
    )


def _num(value: float, *, psnr: bool = False) -> str:
    if value is None or math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if psnr:
        return f"{value:.1f}"
    return "0" if value == 0 else f"{value:.2e}"
