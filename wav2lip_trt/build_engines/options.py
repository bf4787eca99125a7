"""Engine build options, validated in one place, and the command line that reproduces them."""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..tensor_names import SCORING_GRAPHS
from .builder import FLAVOR_CHOICES, ShapeRange
from .precision import PRECISIONS

MIN_S3FD_SIDE = 32  # five 2x2 max-pools must leave at least one pixel

Size = tuple[int, int]  # (height, width)
Batch = tuple[int, int, int]  # (min, opt, max)

CHECKPOINT_FIELDS = {
    "s3fd": ("s3fd_checkpoint", "--s3fd-checkpoint"),
    "wav2lip": ("checkpoint_path", "--checkpoint_path"),
    "expert": ("expert_checkpoint", "--expert-checkpoint"),
    "disc_qual": ("disc_checkpoint", "--disc-checkpoint"),
    "syncnet_v2": ("syncnet_checkpoint", "--syncnet-checkpoint"),
}
"""Network (a key of ``checkpoints.NETWORKS``) -> the option field and flag that name its checkpoint."""


def graphs_of(network: str) -> tuple[str, ...]:
    """The graphs (engine names) one checkpoint gives: itself, or its scoring towers."""
    if network in ("s3fd", "wav2lip"):
        return (network,)
    return tuple(name for name, (net, *_) in SCORING_GRAPHS.items() if net == network)


def network_of(graph: str) -> str:
    return graph if graph in ("s3fd", "wav2lip") else SCORING_GRAPHS[graph][0]


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``build-engines`` takes; a network is built only when its checkpoint is given."""

    checkpoint_path: Path | None = None  # Wav2Lip checkpoint (wav2lip.pth or wav2lip_gan.pth)
    s3fd_checkpoint: Path | None = None  # S3FD checkpoint (s3fd.pth)
    expert_checkpoint: Path | None = None  # lip-sync expert (lipsync_expert.pth): expert_audio, expert_face
    disc_checkpoint: Path | None = None  # quality discriminator (visual_quality_disc.pth): disc_qual
    syncnet_checkpoint: Path | None = None  # syncnet_python's syncnet_v2.model: syncnet_lip, syncnet_audio
    out: Path = Path("engines")  # ONNX files, engines, manifests and the timing cache go here
    precision: str = "fp16"  # fp16 (FP16 graph, L2Norm in FP32, FP32 I/O) or fp32
    flavor: str = "auto"  # auto = tensorrt if importable, else tensorrt-rtx
    s3fd_batch: Batch = (1, 4, 8)  # frames per detector call
    s3fd_min_size: Size = (64, 64)  # frame (height, width) range the detector engine accepts
    s3fd_opt_size: Size = (720, 1280)
    s3fd_max_size: Size = (1920, 1920)  # 1080p in either orientation
    wav2lip_batch: Batch = (1, 128, 128)  # faces per generator call (the original's batch is 128)
    scoring_batch: Batch = (1, 64, 64)  # windows or faces per scoring-tower call (infer --score uses 64)
    workspace_mib: int | None = None  # builder scratch memory limit; None = TensorRT's default
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX targets ("8.6", "12.0", "current"); () = portable
    onnx_only: bool = False  # stop after the ONNX export
    force: bool = False  # rebuild even when up to date

    def validate(self) -> None:
        """Raise :class:`InputError` for anything that would fail later, before slow work starts."""
        if not self.checkpoints():
            raise InputError("give at least one checkpoint: --checkpoint_path (Wav2Lip), --s3fd-checkpoint (S3FD), "
                             "--expert-checkpoint, --disc-checkpoint or --syncnet-checkpoint")
        for field_name, label in CHECKPOINT_FIELDS.values():
            path = getattr(self, field_name)
            if path is not None and not Path(path).is_file():
                raise InputError(f"{label} file not found: {path}")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise InputError(f"--out {self.out} is a file; give a directory")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.flavor not in FLAVOR_CHOICES:
            raise InputError(f"--flavor {self.flavor!r}: choose one of {', '.join(FLAVOR_CHOICES)}")
        for name, batch in (("s3fd", self.s3fd_batch), ("wav2lip", self.wav2lip_batch),
                            ("scoring", self.scoring_batch)):
            if not 1 <= batch[0] <= batch[1] <= batch[2]:
                raise InputError(f"--{name}-min/opt/max-batch must satisfy 1 <= min <= opt <= max, got {batch}")
        sizes = (self.s3fd_min_size, self.s3fd_opt_size, self.s3fd_max_size)
        for axis, label in ((0, "height"), (1, "width")):
            low, mid, high = (size[axis] for size in sizes)
            if not MIN_S3FD_SIDE <= low <= mid <= high:
                raise InputError(
                    f"--s3fd-min/opt/max-size {label}s must satisfy {MIN_S3FD_SIDE} <= min <= opt <= max, got "
                    f"{low}, {mid}, {high}"
                )
        if self.workspace_mib is not None and self.workspace_mib <= 0:
            raise InputError(f"--workspace must be a positive number of MiB, got {self.workspace_mib}")
        if self.compute_capabilities and self.onnx_only:
            raise InputError("--compute-capabilities has no effect with --onnx-only")

    def checkpoints(self) -> dict[str, Path]:
        """Graph name -> checkpoint: S3FD, Wav2Lip (the pipeline's order), then the scoring towers."""
        out: dict[str, Path] = {}
        for network, (field_name, _) in CHECKPOINT_FIELDS.items():
            path = getattr(self, field_name)
            if path is not None:
                out.update((graph, Path(path)) for graph in graphs_of(network))
        return out

    def profile(self, model: str) -> dict[str, ShapeRange]:
        if model == "s3fd":
            (b0, b1, b2), sizes = self.s3fd_batch, (self.s3fd_min_size, self.s3fd_opt_size, self.s3fd_max_size)
            shapes = [(b, 3, h, w) for b, (h, w) in zip((b0, b1, b2), sizes)]
            return {"image": ShapeRange(*shapes)}
        if model == "wav2lip":
            b = self.wav2lip_batch
            return {
                "mel": ShapeRange(*((n, 1, 80, 16) for n in b)),
                "face": ShapeRange(*((n, 6, 96, 96) for n in b)),
            }
        _, name, _, shape = SCORING_GRAPHS[model]
        return {name: ShapeRange(*((n, *shape) for n in self.scoring_batch))}

    def for_model(self, model: str, checkpoint: Path) -> "BuildOptions":
        """These options restricted to one network (for the rebuild command of one engine)."""
        cleared: dict[str, Any] = {field_name: None for field_name, _ in CHECKPOINT_FIELDS.values()}
        cleared[CHECKPOINT_FIELDS[network_of(model)][0]] = checkpoint
        return replace(self, **cleared, force=False, onnx_only=False)

    def command(self) -> str:
        """The ``wav2lip-trt build-engines`` command line for these options (defaults left out)."""
        default = BuildOptions()
        parts = ["wav2lip-trt", "build-engines"]
        for field_name, label in CHECKPOINT_FIELDS.values():
            if getattr(self, field_name) is not None:
                parts += [label, str(getattr(self, field_name))]
        parts += ["--out", str(self.out), "--precision", self.precision]
        if self.flavor != default.flavor:
            parts += ["--flavor", self.flavor]
        models = self.checkpoints()
        if "s3fd" in models:
            for field_name, kind in (("min", 0), ("opt", 1), ("max", 2)):
                if self.s3fd_batch[kind] != default.s3fd_batch[kind]:
                    parts += [f"--s3fd-{field_name}-batch", str(self.s3fd_batch[kind])]
            for field_name in ("min", "opt", "max"):
                size = getattr(self, f"s3fd_{field_name}_size")
                if size != getattr(default, f"s3fd_{field_name}_size"):
                    parts += [f"--s3fd-{field_name}-size", f"{size[0]}x{size[1]}"]
        if "wav2lip" in models:
            for field_name, kind in (("min", 0), ("opt", 1), ("max", 2)):
                if self.wav2lip_batch[kind] != default.wav2lip_batch[kind]:
                    parts += [f"--wav2lip-{field_name}-batch", str(self.wav2lip_batch[kind])]
        if any(network_of(graph) not in ("s3fd", "wav2lip") for graph in models):
            for field_name, kind in (("min", 0), ("opt", 1), ("max", 2)):
                if self.scoring_batch[kind] != default.scoring_batch[kind]:
                    parts += [f"--scoring-{field_name}-batch", str(self.scoring_batch[kind])]
        if self.workspace_mib is not None:
            parts += ["--workspace", str(self.workspace_mib)]
        if self.compute_capabilities:
            parts += ["--compute-capabilities", ",".join(self.compute_capabilities)]
        if self.onnx_only:
            parts.append("--onnx-only")
        if self.force:
            parts.append("--force")
        return shlex.join(parts)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in data.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BuildOptions":
        """Inverse of :meth:`to_json`; unknown keys (from newer versions) are ignored."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name in ("out", *(field_name for field_name, _ in CHECKPOINT_FIELDS.values())):
                value = None if value is None else Path(value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs)


def parse_size(text: str) -> Size:
    """``720x1280`` or ``720,1280`` -> (720, 1280): height first, like the tensors."""
    match = re.fullmatch(r"\s*(\d+)\s*[x,X*]\s*(\d+)\s*", text)
    if not match:
        raise InputError(f"expected a frame size HEIGHTxWIDTH such as 720x1280, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def parse_compute_capabilities(text: str) -> tuple[str, ...]:
    """``sm86,8.9,120,current`` -> ("8.6", "8.9", "12.0", "current"); empty or ``portable`` -> ()."""
    out: list[str] = []
    for raw in re.split(r"[,\s]+", text.strip().lower()):
        if raw in ("", "portable", "default"):
            continue
        if raw == "current":
            out.append("current")
            continue
        match = re.fullmatch(r"(?:sm_?)?(\d{1,2})\.?(\d)", raw)
        if not match:
            raise InputError(
                f"unknown compute capability {raw!r}; write e.g. sm86, 8.6 or current (comma-separated)"
            )
        value = f"{int(match.group(1))}.{match.group(2)}"
        if value not in out:
            out.append(value)
    if "current" in out and len(out) > 1:
        raise InputError("--compute-capabilities current cannot be combined with other targets")
    return tuple(out)
