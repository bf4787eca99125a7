"""``parity --detect-every K / --detect-size N``: what a detection setting costs in boxes, with numbers.

The pipeline runs twice on the clip with torch FP32 on the CPU, both times with the detection cache
off (so S3FD really runs) and ``--dump-intermediates``: once with full-resolution every-frame
detection and once with the setting. The raw boxes S3FD chose (``det_boxes.npy``, before
``--pads`` and smoothing) are compared per frame with :func:`~wav2lip_trt.parity.metrics.compare_boxes`:
mean and min IoU, frames under the ``min_iou`` tolerance, frames where only one side found a face,
and the wall-time ratio of the two runs (and of their S3FD stage).

The check is informational: a setting trades boxes for speed, and the numbers are there to pick
one. It fails the report only when the user gave ``min_iou`` explicitly (``--tolerance min_iou=X``
or ``fp32.min_iou=X``; both runs are FP32): then every frame must reach it.

A detected frame is not always identical under ``--detect-every``: S3FD's post-processing depends
on which frames share a batch, and the setting batches every K-th frame together, not ``[0, 16)``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import BoxComparison, compare_boxes
from .options import Box, ParityOptions, is_explicit

PRECISION = "fp32"  # both runs: torch FP32 on the CPU, the reference rung's runner
FULL = "full-resolution every-frame detection"


@dataclass(frozen=True)
class PipelineRun:
    """One pipeline run of the check: the raw box chosen per frame, and what it took."""

    boxes: list[Box | None]
    seconds: float  # wall time of the whole run (models, decode, detection, lip-sync, encode)
    s3fd_seconds: float  # S3FD's busy time
    s3fd_frames: int  # frames S3FD ran on


@dataclass(frozen=True)
class DetectionCheck:
    """The chosen box per frame with a detection setting against full detection."""

    detect_every: int
    detect_size: int | None
    boxes: BoxComparison  # reference: full detection; per-frame IoU (1.0 where neither found a face)
    min_iou: float  # the fp32 min_iou tolerance
    gated: bool  # min_iou was given explicitly: a frame under it fails the report
    found_by_one: int  # frames where one run found a face and the other did not
    full: PipelineRun
    setting: PipelineRun

    @property
    def name(self) -> str:
        parts = [f"--detect-every {self.detect_every}"] if self.detect_every != 1 else []
        if self.detect_size is not None:
            parts.append(f"--detect-size {self.detect_size}")
        return " ".join(parts)

    @property
    def frames(self) -> int:
        return self.boxes.frames

    @property
    def iou_mean(self) -> float:
        return self.boxes.mean_iou

    @property
    def iou_min(self) -> float:
        """Over every frame (0 where one side found no face), unlike BoxComparison.min_iou."""
        return min(self.boxes.ious, default=1.0)

    @property
    def below(self) -> int:
        return sum(1 for iou in self.boxes.ious if iou < self.min_iou)

    @property
    def time_ratio(self) -> float:
        """Wall time with the setting over wall time with full detection (< 1: the setting is faster)."""
        return self.setting.seconds / self.full.seconds if self.full.seconds > 0 else float("nan")

    @property
    def s3fd_time_ratio(self) -> float:
        return self.setting.s3fd_seconds / self.full.s3fd_seconds if self.full.s3fd_seconds > 0 else float("nan")

    @property
    def passed(self) -> bool:
        return not self.gated or self.below == 0

    def failures(self) -> list[str]:
        if self.passed:
            return []
        return [f"detection {self.name}: {self.below} of {self.frames} frames have IoU under min_iou "
                f"{self.min_iou:g} against {FULL} (min {self.iou_min:.3f})"]

    def lines(self) -> list[str]:
        verdict = ("PASSED" if self.passed else "FAILED") if self.gated else "informational"
        gate = (f"every frame must reach min_iou {self.min_iou:g}" if self.gated else
                "pass --tolerance min_iou=X to make it a gate")
        return [
            f"detection {self.name} (torch {PRECISION} on cpu, cache off) against {FULL}: {verdict} ({gate})",
            f"  chosen box IoU mean {self.iou_mean:.3f} min {self.iou_min:.3f}; {self.below}/{self.frames} frames "
            f"under min_iou {self.min_iou:g}; {self.found_by_one} with a face on one side only; "
            f"{self.boxes.changed}/{self.frames} boxes not identical",
            f"  wall time {self.setting.seconds:.2f} s vs {self.full.seconds:.2f} s (ratio {self.time_ratio:.2f}); "
            f"S3FD {self.setting.s3fd_seconds:.2f} s on {self.setting.s3fd_frames} frames vs "
            f"{self.full.s3fd_seconds:.2f} s on {self.full.s3fd_frames} (ratio {self.s3fd_time_ratio:.2f})",
        ]

    def to_json(self) -> dict[str, Any]:
        def run(r: PipelineRun) -> dict[str, Any]:
            return {"seconds": round(r.seconds, 3), "s3fd_seconds": round(r.s3fd_seconds, 3),
                    "s3fd_frames": r.s3fd_frames}

        return {
            "detect_every": self.detect_every, "detect_size": self.detect_size, "against": FULL,
            "backend": "torch", "precision": PRECISION, "device": "cpu",
            "frames": self.frames, "iou_mean": round(self.iou_mean, 4), "iou_min": round(self.iou_min, 4),
            "min_iou": self.min_iou, "frames_below_min_iou": self.below, "frames_face_found_by_one": self.found_by_one,
            "frames_box_not_identical": self.boxes.changed, "time_ratio": round(self.time_ratio, 3),
            "s3fd_time_ratio": round(self.s3fd_time_ratio, 3), "full": run(self.full), "setting": run(self.setting),
            "gated": self.gated, "passed": self.passed, "ious": [round(v, 4) for v in self.boxes.ious],
        }


def check_detection(options: ParityOptions, face: Path, audio: Path, work: Path) -> DetectionCheck:
    """Run the pipeline with full detection and with the options' setting, and compare the boxes."""
    full = _run(options, face, audio, work / "detection" / "full", detect_every=1, detect_size=None)
    setting = _run(options, face, audio, work / "detection" / "setting", detect_every=options.detect_every,
                   detect_size=options.detect_size)
    return compare_detection(options, full, setting)


def compare_detection(options: ParityOptions, full: PipelineRun, setting: PipelineRun) -> DetectionCheck:
    """The per-frame comparison of two runs' boxes (``full`` is the reference)."""
    min_iou = options.tolerances[PRECISION].min_iou
    # the verdict is this check's own (below, gated); BoxComparison's face-change allowance is not used
    boxes = compare_boxes("chosen box", full.boxes, setting.boxes, min_iou=min_iou, max_face_changes=1.0)
    found_by_one = sum(1 for a, b in zip(full.boxes, setting.boxes) if (a is None) != (b is None))
    return DetectionCheck(options.detect_every, options.detect_size, boxes, min_iou,
                          is_explicit(options.tolerances, PRECISION, "min_iou"), found_by_one, full, setting)


def check_setting_fits(options: ParityOptions, width: int, height: int) -> None:
    """Before anything runs: ``--detect-size`` must leave S3FD at least 32 pixels on the clip's frames."""
    from ..detection.scaled import detect_scale

    detect_scale(width, height, options.detect_size)


def _run(options: ParityOptions, face: Path, audio: Path, run_dir: Path, *, detect_every: int,
         detect_size: int | None) -> PipelineRun:
    """One pipeline run on the clip, timed, with its raw boxes read back from ``det_boxes.npy``; a frame
    without a face passes through, so a setting that loses the face is measured, not stopped."""
    from ..detection.cache import array_to_boxes
    from ..options import InferenceOptions
    from ..session import run_inference

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    start = time.perf_counter()
    result = run_inference(InferenceOptions(
        checkpoint_path=Path(options.checkpoint_path), s3fd_checkpoint=Path(options.s3fd_checkpoint), face=face,
        audio=audio, outfile=run_dir / "out.mp4", on_missing_face="skip", backend="torch", device="cpu",
        precision=PRECISION, dump_intermediates=run_dir / "dump", detect_every=detect_every, detect_size=detect_size,
        no_cache=True,
    ))
    seconds = time.perf_counter() - start
    s3fd = next((row for row in result.stages if row["stage"] == "detect"), {"seconds": 0.0, "items": 0})
    boxes = array_to_boxes(np.load(run_dir / "dump" / "det_boxes.npy"))
    return PipelineRun(boxes, seconds, float(s3fd["seconds"]), int(s3fd["items"]))
