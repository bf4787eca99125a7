"""What ``bench`` accepts, checked before a clip is made or a model is loaded, and the command line
that reproduces a run (stored in every report)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import InputError
from ..options import check_clip_inputs

MODES = ("reference", "torch", "onnxruntime", "tensorrt", "auto")
"""``reference`` = the original algorithm (torch FP32 on the CPU); the others are ``infer --backend``."""


@dataclass(frozen=True)
class BenchOptions:
    """Everything ``bench`` takes, validated in one place."""

    checkpoint_path: Path  # Wav2Lip checkpoint
    s3fd_checkpoint: Path  # S3FD checkpoint
    face: Path | None = None  # clip to lip-sync; None = a generated talking-face clip
    audio: Path | None = None  # its audio (given together with face)
    seconds: float = 4.0  # generated clip: length ...
    size: tuple[int, int] = (240, 320)  # ... (height, width) ...
    fps: float = 25.0  # ... and frame rate
    modes: tuple[str, ...] = ("reference", "torch")
    device: str = "auto"  # for the pipeline modes; the reference always runs on the CPU
    precision: str = "auto"
    engines_dir: Path = Path("engines")
    flavor: str = "auto"
    repeats: int = 3  # measured runs per mode
    warmup: int = 1  # discarded runs per mode first (file caches, lazy kernel compiles)
    box: tuple[int, int, int, int] = (-1, -1, -1, -1)  # fixed face box y1 y2 x1 x2 instead of detection
    face_det_batch_size: int = 16
    wav2lip_batch_size: int = 128
    on_missing_face: str = "error"  # pipeline modes only: the reference always stops on a missing face
    micro: bool = False  # also time the hot stages and the networks in this process
    seed: int = 0
    work_dir: Path | None = None  # clip, outputs and run files; None = a temporary folder

    def validate(self) -> None:
        for label, path in (("--checkpoint_path", self.checkpoint_path), ("--s3fd-checkpoint", self.s3fd_checkpoint)):
            if label == "--s3fd-checkpoint" and self.box[0] != -1:
                continue
            if not Path(path).is_file():
                raise InputError(f"{label} file not found: {path}")
        check_clip_inputs(self.face, self.audio)
        if not self.modes:
            raise InputError("give at least one mode to measure")
        for mode in self.modes:
            if mode not in MODES:
                raise InputError(f"unknown mode {mode!r}; choose from: {', '.join(MODES)}")
        if len(set(self.modes)) != len(self.modes):
            raise InputError(f"a mode is named twice: {', '.join(self.modes)}")
        if self.repeats < 1:
            raise InputError(f"--repeats must be at least 1, got {self.repeats}")
        if self.warmup < 0:
            raise InputError(f"--warmup must be 0 or more, got {self.warmup}")
        if not self.seconds > 0 or not self.fps > 0:
            raise InputError(f"--seconds and --fps must be positive, got {self.seconds} and {self.fps}")
        if min(self.size) < 32:
            raise InputError(f"--size {self.size[0]}x{self.size[1]}: frames must be at least 32x32")
        from ..backends import PRECISION_CHOICES
        from ..options import DEVICES, ON_MISSING_FACE

        choices_of = (("--device", self.device, DEVICES), ("--precision", self.precision, PRECISION_CHOICES),
                      ("--on-missing-face", self.on_missing_face, ON_MISSING_FACE))
        for label, value, choices in choices_of:
            if value not in choices:
                raise InputError(f"{label} {value!r}: choose one of {', '.join(choices)}")

    def command(self) -> str:
        """The ``wav2lip-trt bench`` command line for these options (defaults left out)."""
        default = BenchOptions(self.checkpoint_path, self.s3fd_checkpoint)
        parts = ["wav2lip-trt", "bench", "--checkpoint_path", str(self.checkpoint_path)]
        if self.box[0] == -1:
            parts += ["--s3fd-checkpoint", str(self.s3fd_checkpoint)]
        for f in fields(self):
            if f.name in ("checkpoint_path", "s3fd_checkpoint") or getattr(self, f.name) == getattr(default, f.name):
                continue
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                parts.append(flag)
            elif f.name == "size":
                parts += [flag, f"{value[0]}x{value[1]}"]
            elif f.name == "modes":
                parts += [flag, ",".join(value)]
            elif f.name == "box":
                parts += [flag, *map(str, value)]
            else:
                parts += [flag, str(value)]
        return shlex.join(parts)
