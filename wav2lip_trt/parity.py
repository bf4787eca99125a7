"""``parity``: the same seeded inputs through a ladder of runners, each compared with torch FP32.

The ladder climbs one change at a time, so the first rung that disagrees names what broke:

    torch fp32 (reference, CPU)
      -> onnxruntime fp32   the ONNX export        (same graph, another runtime)
      -> tensorrt fp32      the TensorRT build     (the same ONNX file, compiled)
      -> tensorrt fp16      FP16 precision         (the same build, half precision)
      -> torch fp16 (CUDA)  FP16 precision         (torch with the L2Norm-in-FP32 policy)

Like Polygraphy's comparator, every output gets max/mean/median/p99 absolute and relative errors
and the smallest tolerance that would have passed; images also get a PSNR, and detections the IoU
of the chosen face per frame and the number of frames whose chosen face changed. An element
passes when ``|out - ref| <= atol`` or ``|out - ref| <= rtol * |ref|``.

Rungs that cannot run on this machine (TensorRT without a GPU, a missing package) are skipped
with the reason; a rung the user asked for by name fails instead.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError, MissingDependencyError, Wav2LipTrtError
from .files import work_dir
from .options import check_clip_inputs

if TYPE_CHECKING:
    import torch

    from .backends import Runners

Box = tuple[int, int, int, int]
"""(x1, y1, x2, y2) pixels, end exclusive."""

SAME_FACE_IOU = 0.5
"""Below this IoU two chosen boxes are different faces, not the same face moved (the SSD convention)."""

INPUT_CHOICES = ("random", "clip", "both")
MEL_RANGE = (-4.0, 4.0)  # the mel front end's output range (symmetric, max_abs_value 4)


@dataclass(frozen=True)
class Tolerances:
    """What a rung of one precision must meet against the torch FP32 reference."""

    atol: float  # network outputs (S3FD heads, Wav2Lip pred): an element passes if |out - ref| <= atol ...
    rtol: float  # ... or if |out - ref| <= rtol * |ref|
    frame_atol: float  # end-to-end output frames, in uint8 levels (no relative part)
    min_iou: float  # chosen boxes that are the same face must overlap at least this much
    max_face_changes: float  # fraction of frames whose chosen face may differ (found by one side only, IoU < 0.5)


DEFAULT_TOLERANCES: Mapping[str, Tolerances] = {
    # Observed on CPU: ONNX Runtime vs torch <= 2e-5 on S3FD heads of magnitude ~7, ~2e-6 on pred;
    # a 1e-6 change in pred flips pred * 255 across an integer (uint8 truncation) on a few pixels.
    "fp32": Tolerances(atol=1e-4, rtol=1e-4, frame_atol=1, min_iou=0.9, max_face_changes=0.0),
    # torch FP16 (CPU, same policy) vs FP32: <= 7e-3 on S3FD heads, <= 3e-3 on pred. The S3FD winner's
    # margin over the runner-up can be ~5e-4, so FP16 may pick another box on a few frames.
    "fp16": Tolerances(atol=3e-2, rtol=3e-2, frame_atol=10, min_iou=0.8, max_face_changes=0.05),
}


@dataclass(frozen=True)
class Rung:
    """One runner configuration on the ladder."""

    name: str
    backend: str  # torch | onnxruntime | tensorrt
    precision: str  # fp32 | fp16
    device: str  # cpu | cuda
    breaks: str | None  # what a disagreement here implicates: export, build or precision; None = reference


RUNGS: tuple[Rung, ...] = (
    Rung("torch-fp32", "torch", "fp32", "cpu", None),
    Rung("onnxruntime-fp32", "onnxruntime", "fp32", "cpu", "export"),
    Rung("tensorrt-fp32", "tensorrt", "fp32", "cuda", "build"),
    Rung("tensorrt-fp16", "tensorrt", "fp16", "cuda", "precision"),
    Rung("torch-fp16", "torch", "fp16", "cuda", "precision"),
)
RUNG_NAMES = tuple(r.name for r in RUNGS)
REFERENCE = RUNGS[0]


# ---------------------------------------------------------------------------------------------
# Metrics


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


# ---------------------------------------------------------------------------------------------
# Seeded inputs


def s3fd_feed(batch: int, height: int, width: int, seed: int = 0) -> dict[str, "torch.Tensor"]:
    """The S3FD input for random BGR frames: exactly the pipeline's pre-processing, so the range is real."""
    from .detect import preprocess

    frames = np.random.default_rng([seed, 1]).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    return {"image": preprocess(frames)}


def wav2lip_feed(batch: int, seed: int = 0) -> dict[str, "torch.Tensor"]:
    """Random faces and mels in the generator's layout and range: face [0, 1] with the lower half
    masked, mel uniform over the front end's [-4, 4]."""
    from .faces import IMG_SIZE, generator_inputs

    rng = np.random.default_rng([seed, 2])
    faces = rng.integers(0, 256, (batch, IMG_SIZE, IMG_SIZE, 3), dtype=np.uint8)
    mels = rng.uniform(*MEL_RANGE, (batch, 80, 16)).astype(np.float32)
    mel, face = generator_inputs(faces, mels)
    return {"mel": mel, "face": face}


# ---------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class ParityOptions:
    """Everything ``parity`` takes, validated in one place."""

    checkpoint_path: Path  # Wav2Lip checkpoint
    s3fd_checkpoint: Path  # S3FD checkpoint
    face: Path | None = None  # clip for the clip inputs and the end-to-end check; None = a generated one
    audio: Path | None = None  # its audio (given together with face)
    rungs: tuple[str, ...] = ()  # () = the whole ladder, skipping what cannot run; named rungs must run
    inputs: str = "both"  # per-model inputs: random tensors, the clip's frames, or both
    end_to_end: bool = True  # also run the pipeline on the clip
    seed: int = 0
    s3fd_batch: int = 4  # random S3FD frames per batch ...
    s3fd_size: tuple[int, int] = (240, 320)  # ... of this (height, width)
    wav2lip_batch: int = 32  # random Wav2Lip faces per batch
    clip_frames: int = 8  # clip frames fed to the per-model checks (one batch)
    clip_seconds: float = 2.0  # generated clip: length ...
    clip_size: tuple[int, int] = (128, 160)  # ... and (height, width)
    tolerances: Mapping[str, Tolerances] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    engines_dir: Path | None = None  # existing TensorRT engines; None = build them in work_dir
    flavor: str = "auto"  # TensorRT flavour for building and running engines
    work_dir: Path | None = None  # ONNX files, engines, pipeline dumps; None = a temporary folder

    def validate(self) -> None:
        for label, path in (("--checkpoint_path", self.checkpoint_path), ("--s3fd-checkpoint", self.s3fd_checkpoint)):
            if not Path(path).is_file():
                raise InputError(f"{label} file not found: {path}")
        check_clip_inputs(self.face, self.audio)
        unknown = [r for r in self.rungs if r not in RUNG_NAMES]
        if unknown:
            raise InputError(f"unknown rung {unknown[0]!r}; choose from: {', '.join(RUNG_NAMES)}")
        if self.inputs not in INPUT_CHOICES:
            raise InputError(f"--inputs {self.inputs!r}: choose one of {', '.join(INPUT_CHOICES)}")
        for label, value in (("--s3fd-batch", self.s3fd_batch), ("--wav2lip-batch", self.wav2lip_batch),
                             ("--clip-frames", self.clip_frames)):
            if value < 1:
                raise InputError(f"{label} must be at least 1, got {value}")
        for label, (h, w) in (("--s3fd-size", self.s3fd_size), ("--clip-size", self.clip_size)):
            if min(h, w) < 32:
                raise InputError(f"{label} {h}x{w}: S3FD needs frames of at least 32x32")
        if not self.clip_seconds > 0:
            raise InputError(f"--clip-seconds must be positive, got {self.clip_seconds}")
        if self.engines_dir is not None and not Path(self.engines_dir).is_dir():
            raise InputError(f"--engines {self.engines_dir}: not a directory")
        for precision in ("fp32", "fp16"):
            if precision not in self.tolerances:
                raise InputError(f"no tolerances for {precision}")


def parse_tolerance(text: str) -> tuple[str | None, str, float]:
    """``fp16.atol=0.05`` -> ("fp16", "atol", 0.05); ``min_iou=0.8`` applies to every precision."""
    key, sep, value = text.partition("=")
    names = [f.name for f in fields(Tolerances)]
    precision, _, name = key.strip().rpartition(".")
    name = name.replace("-", "_")
    if not sep or name not in names or precision not in ("", *DEFAULT_TOLERANCES):
        raise InputError(
            f"--tolerance {text!r}: write [PRECISION.]NAME=VALUE with PRECISION fp32 or fp16 and NAME one of "
            f"{', '.join(names)} (e.g. fp16.atol=0.05)"
        )
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"--tolerance {text!r}: {value!r} is not a number") from None
    if not number >= 0:
        raise InputError(f"--tolerance {text!r}: must be a number >= 0")
    return precision or None, name, number


def tolerances_with(overrides: Sequence[str],
                    base: Mapping[str, Tolerances] = DEFAULT_TOLERANCES) -> dict[str, Tolerances]:
    """The default tolerances with ``--tolerance`` overrides applied, in order."""
    result = dict(base)
    for text in overrides:
        precision, name, value = parse_tolerance(text)
        for p in [precision] if precision else list(result):
            result[p] = replace(result[p], **{name: value})
    return result


# ---------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class Check:
    """One set of inputs through one rung: ``s3fd/random``, ``wav2lip/clip``, ``end-to-end`` ..."""

    name: str
    tensors: tuple[TensorComparison, ...] = ()
    boxes: tuple[BoxComparison, ...] = ()
    note: str = ""

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.tensors) and all(b.passed for b in self.boxes)

    def failures(self) -> list[str]:
        return [f"{self.name} {c.describe_failure()}" for c in (*self.tensors, *self.boxes) if not c.passed]


@dataclass(frozen=True)
class RungResult:
    rung: Rung
    status: str  # reference | passed | failed | skipped
    reason: str = ""  # why it was skipped or failed
    checks: tuple[Check, ...] = ()
    seconds: float = 0.0
    device: str = ""  # where it actually ran
    broke: str | None = None  # what a failure implicates: export, build or precision; None = not a numbers failure


@dataclass(frozen=True)
class ParityReport:
    """The ladder's outcome; true when no rung failed and at least one rung was compared."""

    rungs: tuple[RungResult, ...]
    tolerances: Mapping[str, Tolerances]
    inputs: Mapping[str, Any]
    machine: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __bool__(self) -> bool:
        return not self.failures()

    @property
    def passed(self) -> bool:
        return bool(self)

    def rung(self, name: str) -> RungResult | None:
        return next((r for r in self.rungs if r.rung.name == name), None)

    @property
    def compared(self) -> list[RungResult]:
        """Rungs that ran and were compared with the reference (passed, or failed on a result)."""
        return [r for r in self.rungs if r.status == "passed" or (r.status == "failed" and r.broke is not None)]

    def failures(self) -> list[str]:
        """One line per failed rung: which rung broke, what that implicates, and the worst numbers."""
        lines = []
        for r in self.rungs:
            if r.status == "failed":
                lines.append(f"{r.rung.name}: {self._blame(r)}{r.reason}")
        if not lines and not self.compared:
            skipped = "; ".join(f"{r.rung.name}: {r.reason}" for r in self.rungs if r.status == "skipped")
            lines.append("no rung was compared with the reference" + (f" ({skipped})" if skipped else ""))
        return lines

    def _blame(self, result: RungResult) -> str:
        broke = result.broke
        if broke is None:
            return ""
        if broke == "build" and result.reason.startswith(("build failed", "loading failed")):
            return "the TensorRT build broke: "
        if broke == "export" and result.reason.startswith("export failed"):
            return "the ONNX export broke: "
        if broke == "export":
            return "the ONNX export broke (ONNX Runtime runs the exported graph and disagrees with torch): "
        if broke == "build":
            ort = self.rung("onnxruntime-fp32")
            if ort is not None and ort.status == "passed":
                return ("the TensorRT build broke (the engine disagrees while ONNX Runtime, running the same ONNX "
                        "file, agrees): ")
            return ("the export or the TensorRT build broke (onnxruntime-fp32 did not pass, so the export is not "
                    "cleared): ")
        if result.rung.backend == "tensorrt":
            fp32 = self.rung("tensorrt-fp32")
            if fp32 is not None and fp32.status == "passed":
                return "FP16 precision broke (the FP32 engine agrees, the FP16 engine does not): "
            return "FP16 precision or the build broke (tensorrt-fp32 did not pass, so the build is not cleared): "
        return "FP16 precision broke (torch FP16 with S3FD's L2Norm kept in FP32 disagrees with torch FP32): "

    def summary(self) -> str:
        skipped = sum(r.status == "skipped" for r in self.rungs)
        extra = f", {skipped} skipped" if skipped else ""
        compared = len(self.compared)
        if self:
            verb = "agrees" if compared == 1 else "agree"
            return f"PASSED: {compared} rung{'s' * (compared != 1)} {verb} with {REFERENCE.name}{extra}"
        failed = sum(r.status == "failed" for r in self.rungs)
        return f"FAILED: {failed} of {len(self.rungs) - 1} rungs failed{extra}"

    def table(self) -> str:
        head = (f"  {'check':<15} {'output':<14} {'max abs':>9} {'mean abs':>9} {'med abs':>9} {'p99 abs':>9} "
                f"{'max rel':>9} {'p99 rel':>9} {'req atol':>9} {'req rtol':>9} {'PSNR dB':>8}  result")
        lines = []
        for r in self.rungs:
            what = f"{r.rung.backend} {r.rung.precision} on {r.device or r.rung.device}"
            implicates = f"; a failure means {r.rung.breaks}" if r.rung.breaks else ""
            status = r.status.upper() if r.status != "reference" else "reference"
            title = f"{r.rung.name} ({what}{implicates}): {status}"
            if r.seconds:
                title += f" in {r.seconds:.1f} s"
            lines.append(title)
            if r.reason:
                lines.append(f"  {r.reason}")
            if r.status in ("reference", "skipped") or not r.checks:
                continue
            tol = self.tolerances[r.rung.precision]
            lines.append(head)
            lines.append(f"  (req atol: the smallest atol that passes at rtol {_num(tol.rtol)}; req rtol: the smallest "
                         f"rtol at atol {_num(tol.atol)}; frames: atol in uint8 levels, no rtol)")
            for check in r.checks:
                for t in check.tensors:
                    psnr_text = "" if t.psnr_db is None else _num(t.psnr_db, psnr=True)
                    if t.error is not None:
                        lines.append(f"  {check.name:<15} {t.name:<14} {t.error}  FAIL")
                        continue
                    lines.append(
                        f"  {check.name:<15} {t.name:<14} {_num(t.max_abs):>9} {_num(t.mean_abs):>9} "
                        f"{_num(t.median_abs):>9} {_num(t.p99_abs):>9} {_num(t.max_rel):>9} {_num(t.p99_rel):>9} "
                        f"{_num(t.required_atol):>9} {_num(t.required_rtol):>9} {psnr_text:>8}  "
                        f"{'ok' if t.passed else 'FAIL'}"
                    )
                for b in check.boxes:
                    lines.append(
                        f"  {check.name:<15} {b.name:<14} IoU min {b.min_iou:.3f} mean {b.mean_iou:.3f}; "
                        f"{b.changed}/{b.frames} boxes moved, {b.differs} chose another face "
                        f"(allowed {b.allowed_differs})  {'ok' if b.passed else 'FAIL'}"
                    )
                if check.note:
                    lines.append(f"  {check.name:<15} {check.note}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        def tensor(t: TensorComparison) -> dict[str, Any]:
            data = {k: _json_number(v) for k, v in asdict(t).items()}
            data["shape"] = list(t.shape)
            data["passed"] = t.passed
            return data

        def boxes(b: BoxComparison) -> dict[str, Any]:
            data = asdict(b)
            data["ious"] = [round(v, 4) for v in b.ious]
            data["frames"], data["passed"] = b.frames, b.passed
            return data

        return {
            "passed": self.passed,
            "summary": self.summary(),
            "failures": self.failures(),
            "reference": REFERENCE.name,
            "seconds": round(self.seconds, 2),
            "tolerances": {p: asdict(t) for p, t in self.tolerances.items()},
            "inputs": dict(self.inputs),
            "rungs": [
                {
                    "name": r.rung.name, "backend": r.rung.backend, "precision": r.rung.precision,
                    "device": r.device or r.rung.device, "implicates": r.rung.breaks, "status": r.status,
                    "broke": r.broke, "reason": r.reason, "seconds": round(r.seconds, 2),
                    "checks": [
                        {"name": c.name, "passed": c.passed, "note": c.note,
                         "outputs": [tensor(t) for t in c.tensors], "boxes": [boxes(b) for b in c.boxes]}
                        for c in r.checks
                    ],
                }
                for r in self.rungs
            ],
            "machine": dict(self.machine),
        }


def _num(value: float, *, psnr: bool = False) -> str:
    if value is None or math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if psnr:
        return f"{value:.1f}"
    return "0" if value == 0 else f"{value:.2e}"


def _json_number(value: Any) -> Any:
    """JSON has no infinity or NaN: they are written as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


# ---------------------------------------------------------------------------------------------
# The ladder


@dataclass
class _Outputs:
    """What one rung produced for one check: named arrays and per-frame chosen boxes."""

    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    boxes: dict[str, list[Box | None]] = field(default_factory=dict)


@dataclass
class _Clip:
    face: Path
    audio: Path
    generated: bool
    frames: np.ndarray  # (N, H, W, 3) uint8 BGR: the first clip_frames frames
    mel: np.ndarray  # (80, T) float32
    fps: float


@dataclass
class _Feeds:
    """The inputs every rung sees; the clip's Wav2Lip faces are cut at the reference's boxes."""

    s3fd: dict[str, dict[str, "torch.Tensor"]]  # input kind -> feed
    wav2lip: dict[str, dict[str, "torch.Tensor"]]
    clip: _Clip | None


def run_parity(options: ParityOptions, *, log: Callable[[str], None] | None = None) -> ParityReport:
    """Run the ladder and compare every rung with the torch FP32 reference.

    The reference itself failing (a bad checkpoint, an unreadable clip) is the user's error and
    raises; every other rung's error is reported against that rung.
    """
    from .measure import machine_record

    options.validate()
    say = log or (lambda _: None)
    started = time.perf_counter()
    wanted = [r for r in RUNGS if r is REFERENCE or not options.rungs or r.name in options.rungs]
    with work_dir(options.work_dir, "wav2lip-trt-parity-") as work:
        clip = _load_clip(options, work) if options.inputs != "random" or options.end_to_end else None
        feeds = _feeds(options, clip)
        say(f"{REFERENCE.name}: running the reference")
        ref_start = time.perf_counter()
        try:
            reference = _collect(REFERENCE, options, work, feeds)
        except _StageError as exc:  # the reference failing is the user's problem (or a bug), not a rung's result
            raise exc.exc
        results = [RungResult(REFERENCE, "reference", checks=(), seconds=time.perf_counter() - ref_start, device="cpu")]
        for rung in wanted[1:]:
            requested = rung.name in options.rungs
            why_not = _unavailable(rung, options.flavor)
            if why_not is not None:
                status = "failed" if requested else "skipped"
                reason = f"requested, but it cannot run here: {why_not}" if requested else why_not
                say(f"{rung.name}: {status} ({why_not})")
                results.append(RungResult(rung, status, reason))
                continue
            say(f"{rung.name}: running")
            results.append(_run_rung(rung, options, work, feeds, reference))
    inputs = _describe_inputs(options, clip)
    machine = machine_record()
    return ParityReport(tuple(results), dict(options.tolerances), inputs, machine, time.perf_counter() - started)


def _unavailable(rung: Rung, flavor: str) -> str | None:
    """Why this rung cannot run on this machine, or None."""
    import torch

    if rung.backend == "onnxruntime":
        for module, extra in (("onnx", "onnx"), ("onnxruntime", "onnx")):
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (pip install 'wav2lip-trt[{extra}]')"
        return None
    if rung.device == "cuda" and not torch.cuda.is_available():
        what = "TensorRT engines run" if rung.backend == "tensorrt" else "torch FP16 runs"
        return f"{what} on an NVIDIA GPU, and torch sees none"
    if rung.backend == "tensorrt":
        from .build_engines import load_tensorrt

        try:
            load_tensorrt(flavor)
        except MissingDependencyError as exc:
            return str(exc)
    return None


def _run_rung(rung: Rung, options: ParityOptions, work: Path, feeds: _Feeds,
              reference: dict[str, _Outputs]) -> RungResult:
    start = time.perf_counter()
    try:
        outputs = _collect(rung, options, work, feeds)
    except Exception as exc:  # any failure to export, build or run is this rung's result, not a crash
        stage = exc.stage if isinstance(exc, _StageError) else "running"
        loading = "build" if rung.backend == "tensorrt" else rung.breaks  # an engine that will not load
        broke = {"export": "export", "build": "build", "loading": loading}
        return RungResult(rung, "failed", f"{stage} failed: {_one_line(exc)}", (), time.perf_counter() - start,
                          broke=broke.get(stage, rung.breaks))
    tol = options.tolerances[rung.precision]
    checks = tuple(_compare(name, reference[name], outputs[name], tol) for name in reference)
    failures = [line for c in checks for line in c.failures()]
    status = "failed" if failures else "passed"
    reason = "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more" if len(failures) > 3 else "")
    return RungResult(rung, status, reason, checks, time.perf_counter() - start, rung.device,
                      broke=rung.breaks if failures else None)


class _StageError(Exception):
    """Tags an exception with the step (export, build, load, run) it happened in."""

    def __init__(self, stage: str, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.stage, self.exc = stage, exc


def _one_line(exc: BaseException) -> str:
    inner = exc.exc if isinstance(exc, _StageError) else exc
    text = " ".join(str(inner).split()) or type(inner).__name__
    if not isinstance(inner, Wav2LipTrtError):
        text = f"{type(inner).__name__}: {text}"
    return text if len(text) <= 300 else text[:297] + "..."


@contextmanager
def _step(stage: str) -> Iterator[None]:
    try:
        yield
    except _StageError:
        raise
    except Exception as exc:
        raise _StageError(stage, exc) from exc


@contextmanager
def _create_runners(rung: Rung, options: ParityOptions, work: Path, feeds: _Feeds) -> Iterator["Runners"]:
    """The detector and generator for a rung; ONNX files and engines come from one folder, so the
    ONNX Runtime rung and the TensorRT rungs run the very same exported graph."""
    import torch

    from .backends import RunnerRequest, Runners, create_runners

    if rung.backend == "torch":
        request = RunnerRequest(checkpoint_path=Path(options.checkpoint_path),
                                s3fd_checkpoint=Path(options.s3fd_checkpoint), device=torch.device(rung.device),
                                precision=rung.precision)
        with _step("loading"):
            runners = create_runners("torch", request)
        with runners:
            yield runners
        return
    artifacts = work / "artifacts"
    if rung.backend == "onnxruntime":
        from .build_engines import BuildOptions, artifact_paths, build_engines
        from .runners.onnxruntime_runner import OnnxRuntimeRunner

        with _step("export"):
            build_engines(BuildOptions(checkpoint_path=Path(options.checkpoint_path),
                                       s3fd_checkpoint=Path(options.s3fd_checkpoint), out=artifacts,
                                       precision=rung.precision, onnx_only=True), show_progress=False)
        with _step("loading"):
            runners = Runners(
                OnnxRuntimeRunner(artifact_paths(artifacts, "s3fd", rung.precision).onnx, name=rung.name),
                OnnxRuntimeRunner(artifact_paths(artifacts, "wav2lip", rung.precision).onnx, name=rung.name),
                rung.backend, rung.precision,
            )
        with runners:
            yield runners
        return
    from .build_engines import artifact_paths
    from .runners.tensorrt_runner import TensorRTRunner

    engines = options.engines_dir
    if engines is None:
        engines = artifacts
        with _step("build"):
            _build_engines(rung.precision, options, artifacts, feeds)
    with _step("loading"):
        detector = TensorRTRunner(artifact_paths(engines, "s3fd", rung.precision).engine,
                                  checkpoint_path=options.s3fd_checkpoint, flavor=options.flavor, name=rung.name)
        generator = TensorRTRunner(artifact_paths(engines, "wav2lip", rung.precision).engine,
                                   checkpoint_path=options.checkpoint_path, flavor=options.flavor, name=rung.name)
    with Runners(detector, generator, rung.backend, rung.precision) as runners:
        yield runners


def _build_engines(precision: str, options: ParityOptions, out: Path, feeds: _Feeds) -> None:
    """Engines whose profiles cover every input this run feeds them."""
    from .build_engines import BuildOptions, build_engines

    sizes = [tuple(f["image"].shape[2:]) for f in feeds.s3fd.values()]
    if feeds.clip is not None:
        sizes.append(tuple(feeds.clip.frames.shape[1:3]))
    batches = [f["image"].shape[0] for f in feeds.s3fd.values()] + [16]
    low = (min(h for h, _ in sizes), min(w for _, w in sizes))
    high = (max(h for h, _ in sizes), max(w for _, w in sizes))
    w2l = max([options.wav2lip_batch, 128] + [f["mel"].shape[0] for f in feeds.wav2lip.values()])
    build_engines(BuildOptions(
        checkpoint_path=Path(options.checkpoint_path), s3fd_checkpoint=Path(options.s3fd_checkpoint), out=out,
        precision=precision, flavor=options.flavor, s3fd_batch=(1, max(batches), max(batches)),
        s3fd_min_size=low, s3fd_opt_size=high, s3fd_max_size=high, wav2lip_batch=(1, w2l, w2l),
    ), show_progress=False)


def _load_clip(options: ParityOptions, work: Path) -> _Clip:
    from .audio import load_audio, melspectrogram
    from .video import FaceSource

    generated = options.face is None
    if generated:
        from .samples import write_talking_clip

        height, width = options.clip_size
        face, audio = write_talking_clip(work / "clip", seconds=options.clip_seconds, width=width, height=height,
                                         seed=options.seed)
    else:
        face, audio = Path(options.face), Path(options.audio)  # type: ignore[arg-type]
    source = FaceSource(face)
    frames = np.stack(list(source.frames(options.clip_frames)))
    return _Clip(face, audio, generated, frames, melspectrogram(load_audio(audio)), source.info.fps)


def _feeds(options: ParityOptions, clip: _Clip | None) -> _Feeds:
    from .detect import preprocess

    s3fd: dict[str, dict[str, torch.Tensor]] = {}
    wav2lip: dict[str, dict[str, torch.Tensor]] = {}
    if options.inputs in ("random", "both"):
        s3fd["random"] = s3fd_feed(options.s3fd_batch, *options.s3fd_size, seed=options.seed)
        wav2lip["random"] = wav2lip_feed(options.wav2lip_batch, seed=options.seed)
    if options.inputs in ("clip", "both") and clip is not None:
        s3fd["clip"] = {"image": preprocess(clip.frames)}
    return _Feeds(s3fd, wav2lip, clip)


def _clip_faces(clip: _Clip, boxes: Sequence[Box | None]) -> dict[str, "torch.Tensor"]:
    """Wav2Lip inputs cut from the clip's frames at the reference's boxes (padded like the pipeline;
    the central square where no face was found) with the clip's own mel chunks."""
    from .audio import MelChunks
    from .boxes import pad_box
    from .faces import crop_faces, generator_inputs
    from .options import InferenceOptions

    pads = next(f.default for f in fields(InferenceOptions) if f.name == "pads")  # infer's default --pads
    height, width = clip.frames.shape[1:3]
    crops = []
    for box in boxes:
        row = None if box is None else pad_box(box, pads, height, width)
        if row is None or row[2] <= row[0] or row[3] <= row[1]:
            side = min(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            crops.append((top, top + side, left, left + side))
        else:
            x1, y1, x2, y2 = (int(v) for v in row)
            crops.append((y1, y2, x1, x2))
    faces = crop_faces(list(clip.frames), crops)
    chunks = MelChunks(clip.mel, clip.fps)
    mel, face = generator_inputs(faces, chunks.gather([i % len(chunks) for i in range(len(faces))]))
    return {"mel": mel, "face": face}


def _collect(rung: Rung, options: ParityOptions, work: Path, feeds: _Feeds) -> dict[str, _Outputs]:
    """Every check's outputs from one rung, in a fixed order; the reference also cuts the clip's faces."""
    from .detect import choose_faces
    from .runners.base import S3FD_OUTPUTS

    out: dict[str, _Outputs] = {}
    with _create_runners(rung, options, work, feeds) as runners:
        for kind, feed in feeds.s3fd.items():
            with _step("running S3FD"):
                raw = runners.detector.infer(feed)  # type: ignore[union-attr]
                tensors = {n: raw[n].detach().to("cpu").float().numpy().copy() for n in S3FD_OUTPUTS}
            faces = choose_faces([_as_tensor(tensors[n]) for n in S3FD_OUTPUTS])
            out[f"s3fd/{kind}"] = _Outputs(tensors, {"chosen face": faces})
            if kind == "clip" and rung is REFERENCE:
                feeds.wav2lip["clip"] = _clip_faces(feeds.clip, faces)  # type: ignore[arg-type]
        for kind, feed in feeds.wav2lip.items():
            with _step("running Wav2Lip"):
                pred = runners.generator.infer(feed)["pred"].detach().to("cpu").float().numpy().copy()
            out[f"wav2lip/{kind}"] = _Outputs({"pred": pred})
    if options.end_to_end and feeds.clip is not None:
        with _step("running the pipeline"):
            out["end-to-end"] = _run_pipeline(rung, options, feeds.clip, work)
    return out


def _as_tensor(array: np.ndarray) -> "torch.Tensor":
    import torch

    return torch.from_numpy(array)


def _run_pipeline(rung: Rung, options: ParityOptions, clip: _Clip, work: Path) -> _Outputs:
    """The public pipeline on the clip with this rung's backend, its intermediates dumped; a frame
    without a face passes through, so a rung that misses a face is compared, not stopped."""
    from .options import InferenceOptions
    from .session import run_inference

    run_dir = work / "end-to-end" / rung.name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    engines = options.engines_dir if options.engines_dir is not None else work / "artifacts"
    run_inference(InferenceOptions(
        checkpoint_path=Path(options.checkpoint_path), s3fd_checkpoint=Path(options.s3fd_checkpoint), face=clip.face,
        audio=clip.audio, outfile=run_dir / "out.mp4", on_missing_face="skip", backend=rung.backend,
        device=rung.device, precision=rung.precision, engines_dir=Path(engines), flavor=options.flavor,
        dump_intermediates=run_dir / "dump",
    ))
    arrays = {name: np.load(run_dir / "dump" / f"{name}.npy") for name in ("det_boxes", "boxes", "pred", "frames")}
    det = [None if row[0] < 0 else (int(row[0]), int(row[1]), int(row[2]), int(row[3])) for row in arrays["det_boxes"]]
    final = [None if row[0] < 0 else (int(row[2]), int(row[0]), int(row[3]), int(row[1])) for row in arrays["boxes"]]
    return _Outputs({"pred": arrays["pred"], "frames": arrays["frames"]}, {"detected face": det, "final box": final})


def _compare(name: str, ref: _Outputs, out: _Outputs, tol: Tolerances) -> Check:
    boxes = tuple(
        compare_boxes(key, ref.boxes[key], out.boxes[key], min_iou=tol.min_iou, max_face_changes=tol.max_face_changes)
        for key in ref.boxes
    )
    if name != "end-to-end":
        tensors = tuple(
            compare_tensors(key, ref.tensors[key], out.tensors[key], atol=tol.atol, rtol=tol.rtol,
                            peak=1.0 if key == "pred" else None)
            for key in ref.tensors
        )
        return Check(name, tensors, boxes)
    # A frame whose final box moved shows another crop: its pixels would only measure the move,
    # which the box comparison already reports.
    ref_boxes, out_boxes = ref.boxes["final box"], out.boxes["final box"]
    same = np.array([a == b for a, b in zip(ref_boxes, out_boxes)], dtype=bool)
    faced = same & np.array([b is not None for b in ref_boxes], dtype=bool)
    tensors = (
        compare_tensors("pred", ref.tensors["pred"][faced], out.tensors["pred"][faced], atol=tol.atol, rtol=tol.rtol,
                        peak=1.0),
        compare_tensors("frames", ref.tensors["frames"][same], out.tensors["frames"][same], atol=tol.frame_atol,
                        rtol=0.0, peak=255.0),
    )
    note = (f"{int(same.sum())} of {len(same)} frames compared pixel by pixel (same final box), "
            f"{int(faced.sum())} of them with a face")
    return Check(name, tensors, boxes, note)


def _describe_inputs(options: ParityOptions, clip: _Clip | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "kind": options.inputs, "seed": options.seed, "end_to_end": options.end_to_end,
        "checkpoints": {"wav2lip": str(options.checkpoint_path), "s3fd": str(options.s3fd_checkpoint)},
    }
    if options.inputs in ("random", "both"):
        h, w = options.s3fd_size
        info["s3fd_random"] = f"{options.s3fd_batch}x3x{h}x{w} (random BGR frames, pre-processed)"
        info["wav2lip_random"] = f"{options.wav2lip_batch} faces 96x96, mel 80x16 uniform in [-4, 4]"
    if clip is not None:
        h, w = clip.frames.shape[1:3]
        info["clip"] = {"face": str(clip.face) if not clip.generated else "generated talking-face clip",
                        "audio": str(clip.audio) if not clip.generated else "generated speech-like audio",
                        "size": f"{w}x{h}", "fps": clip.fps, "model_check_frames": len(clip.frames)}
        if clip.generated:
            info["clip"]["seconds"] = options.clip_seconds
    return info
