"""``parity``'s options: the rungs of the ladder, the tolerances each precision must meet, and
everything the command takes, validated in one place. Every other module of the package uses these."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ..errors import InputError
from ..options import check_clip_inputs

Box = tuple[int, int, int, int]
"""(x1, y1, x2, y2) pixels, end exclusive."""

SAME_FACE_IOU = 0.5
"""Below this IoU two chosen boxes are different faces, not the same face moved (the SSD convention)."""

INPUT_CHOICES = ("random", "clip", "both")


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
    detect_every: int = 1  # with detect_size: a detection setting to measure against full detection ...
    detect_size: int | None = None  # ... (1 and None = no such check); see parity.detection
    expert_checkpoint: Path | None = None  # the scoring networks' towers on every rung too (parity.scoring)
    disc_checkpoint: Path | None = None
    syncnet_checkpoint: Path | None = None

    @property
    def checks_detection(self) -> bool:
        """Whether a detection setting was given, so the report measures it against full detection."""
        return self.detect_every != 1 or self.detect_size is not None

    def validate(self) -> None:
        for label, path in (("--checkpoint_path", self.checkpoint_path), ("--s3fd-checkpoint", self.s3fd_checkpoint),
                            ("--expert-checkpoint", self.expert_checkpoint), ("--disc-checkpoint", self.disc_checkpoint),
                            ("--syncnet-checkpoint", self.syncnet_checkpoint)):
            if path is not None and not Path(path).is_file():
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
        if isinstance(self.detect_every, bool) or not isinstance(self.detect_every, int) or self.detect_every < 1:
            raise InputError(f"--detect-every must be a whole number of frames, at least 1, got {self.detect_every}")
        from ..detection.scaled import check_detect_size

        check_detect_size(self.detect_size)


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


class ToleranceTable(dict[str, Tolerances]):
    """Tolerances per precision that also remember which ``(precision, name)`` pairs the user set.

    A check that is informational by default (the detection setting's ``min_iou``) becomes a gate
    only when the user gave its tolerance; a value equal to the default still counts as given.
    """

    def __init__(self, table: Mapping[str, Tolerances] | None = None,
                 explicit: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(table or {})
        self.explicit = frozenset(explicit)


def is_explicit(tolerances: Mapping[str, Tolerances], precision: str, name: str) -> bool:
    """Whether ``--tolerance`` set ``name`` for ``precision`` (a plain mapping has nothing explicit)."""
    return (precision, name) in getattr(tolerances, "explicit", frozenset())


def tolerances_with(overrides: Sequence[str],
                    base: Mapping[str, Tolerances] = DEFAULT_TOLERANCES) -> ToleranceTable:
    """The default tolerances with ``--tolerance`` overrides applied, in order (and remembered as given)."""
    result = dict(base)
    explicit = set()
    for text in overrides:
        precision, name, value = parse_tolerance(text)
        for p in [precision] if precision else list(result):
            result[p] = replace(result[p], **{name: value})
            explicit.add((p, name))
    return ToleranceTable(result, explicit)
