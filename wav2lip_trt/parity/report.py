"""``parity``'s report: the checks of each rung, the verdict with which rung broke, the table and the JSON."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .metrics import BoxComparison, TensorComparison, _num
from .options import REFERENCE, Rung, Tolerances

if TYPE_CHECKING:
    from .detection import DetectionCheck


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
    detection: DetectionCheck | None = None  # --detect-every/--detect-size against full detection

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
        """One line per failed rung: which rung broke, what that implicates, and the worst numbers;
        then the detection setting's, when its min_iou was given and a frame is under it."""
        lines = []
        for r in self.rungs:
            if r.status == "failed":
                lines.append(f"{r.rung.name}: {self._blame(r)}{r.reason}")
        if not lines and not self.compared:
            skipped = "; ".join(f"{r.rung.name}: {r.reason}" for r in self.rungs if r.status == "skipped")
            lines.append("no rung was compared with the reference" + (f" ({skipped})" if skipped else ""))
        if self.detection is not None:
            lines.extend(self.detection.failures())
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
        detection = "" if self.detection is None or self.detection.passed else ", the detection setting failed"
        return f"FAILED: {failed} of {len(self.rungs) - 1} rungs failed{extra}{detection}"

    def table(self) -> str:
        cw = max([15] + [len(c.name) for r in self.rungs for c in r.checks])
        ow = max([14] + [len(t.name) for r in self.rungs for c in r.checks for t in c.tensors])
        head = (f"  {'check':<{cw}} {'output':<{ow}} {'max abs':>9} {'mean abs':>9} {'med abs':>9} {'p99 abs':>9} "
                f"{'max rel':>9} {'p99 rel':>9} {'req atol':>9} {'req rtol':>9} {'PSNR dB':>8}  result")
        lines = [f"torch intra-op threads: {self.machine.get('torch_threads', '?')} (CPU results are bit-identical to "
                 "the original's at the same thread count)"]
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
                        lines.append(f"  {check.name:<{cw}} {t.name:<{ow}} {t.error}  FAIL")
                        continue
                    lines.append(
                        f"  {check.name:<{cw}} {t.name:<{ow}} {_num(t.max_abs):>9} {_num(t.mean_abs):>9} "
                        f"{_num(t.median_abs):>9} {_num(t.p99_abs):>9} {_num(t.max_rel):>9} {_num(t.p99_rel):>9} "
                        f"{_num(t.required_atol):>9} {_num(t.required_rtol):>9} {psnr_text:>8}  "
                        f"{'ok' if t.passed else 'FAIL'}"
                    )
                for b in check.boxes:
                    lines.append(
                        f"  {check.name:<{cw}} {b.name:<{ow}} IoU min {b.min_iou:.3f} mean {b.mean_iou:.3f}; "
                        f"{b.changed}/{b.frames} boxes moved, {b.differs} chose another face "
                        f"(allowed {b.allowed_differs})  {'ok' if b.passed else 'FAIL'}"
                    )
                if check.note:
                    lines.append(f"  {check.name:<{cw}} {check.note}")
        if self.detection is not None:
            lines.extend(self.detection.lines())
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
            "detection": None if self.detection is None else {
                k: _json_number(v) for k, v in self.detection.to_json().items()
            },
            "threads": self.machine.get("torch_threads"),  # CPU bits equal the original's at equal thread counts
            "machine": dict(self.machine),
        }


def _json_number(value: Any) -> Any:
    """JSON has no infinity or NaN: they are written as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value
