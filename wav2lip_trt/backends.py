"""Backend registry: a name maps to a function that builds the detector and generator runners.

``auto`` picks TensorRT when usable engines exist for this checkpoint and GPU, else torch-CUDA
FP16, else torch on the CPU, and says which it picked and why.

On CUDA both runners share one compute stream: the request's (the pipeline's), or one created
here when the request has none, so that detection, generation and the kernels around them are
ordered by that stream and by events, never by the current or legacy default stream.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import InputError, Wav2LipTrtError
from .options import BACKEND_CHOICES, PRECISION_CHOICES  # noqa: F401  (re-exported)
from .runners.base import S3FD_INPUTS, S3FD_OUTPUTS, WAV2LIP_INPUTS, WAV2LIP_OUTPUTS, Runner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerRequest:
    """What a backend needs to build its runners."""

    checkpoint_path: Path | None  # None = no generator (detection only: the detect command)
    s3fd_checkpoint: Path | None  # None = no detection needed (--box given)
    device: torch.device
    precision: str = "auto"  # auto = fp16 for engines and CUDA, fp32 on CPU
    engines_dir: Path = Path("engines")
    flavor: str = "auto"  # TensorRT flavour for the tensorrt backend
    stream: torch.cuda.Stream | None = None  # CUDA compute stream both runners enqueue on; None = one made here
    generator_batch: int | None = None  # the generator's fixed batch (torch CUDA graphs); None = its first batch


@dataclass
class Runners:
    detector: Runner | None
    generator: Runner | None  # None only for a detection-only request
    backend: str
    precision: str
    notes: list[str] = field(default_factory=list)
    stream: torch.cuda.Stream | None = None  # the runners' compute stream (None on the CPU)

    def __enter__(self) -> "Runners":
        return self

    def __exit__(self, *exc: object) -> None:
        for runner in (self.detector, self.generator):
            if runner is not None:
                runner.__exit__(*exc)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when torch sees a GPU; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA GPU (use --device cpu or auto)")
    return torch.device(name)


def _compute_stream(request: RunnerRequest, device: torch.device) -> torch.cuda.Stream | None:
    """The stream both runners share: the request's, else a new one (never the current stream).

    None where there is no CUDA, so that the runners themselves report that with their own error.
    """
    if request.stream is not None or device.type != "cuda" or not torch.cuda.is_available():
        return request.stream
    return torch.cuda.Stream(device)


def _precision(request: RunnerRequest) -> str:
    if request.precision != "auto":
        return request.precision
    return "fp16" if request.device.type == "cuda" else "fp32"


def _torch_runners(request: RunnerRequest) -> Runners:
    from .build_engines.precision import half_with_policy
    from .checkpoints import load_s3fd, load_wav2lip
    from .runners.torch_runner import TorchRunner

    precision = _precision(request)
    if precision == "fp16" and request.device.type != "cuda":
        raise InputError("--precision fp16 with the torch backend needs --device cuda (CPUs have no fast FP16)")
    dtype = torch.float16 if precision == "fp16" else torch.float32
    on_gpu = request.device.type == "cuda"  # channels-last suits tensor cores
    stream = _compute_stream(request, request.device)
    # A CUDA graph removes the generator's launch overhead at its one fixed batch; S3FD gets none:
    # it runs at every frame size, and its few large kernels lose little to launches.
    generator = None
    if request.checkpoint_path is not None:
        generator = TorchRunner(load_wav2lip(request.checkpoint_path), WAV2LIP_INPUTS, WAV2LIP_OUTPUTS, name="torch",
                                device=request.device, dtype=dtype, channels_last=on_gpu, cuda_graphs=on_gpu,
                                graph_batch=request.generator_batch, stream=stream)
    detector = None
    if request.s3fd_checkpoint is not None:
        s3fd = load_s3fd(request.s3fd_checkpoint)
        if precision == "fp16":
            s3fd = half_with_policy(s3fd)  # L2Norm stays FP32: its sum of squares overflows FP16
        detector = TorchRunner(s3fd, S3FD_INPUTS, S3FD_OUTPUTS, name="torch", device=request.device, dtype=dtype,
                               channels_last=on_gpu, stream=stream)
    return Runners(detector, generator, "torch", precision, stream=stream)


def _onnxruntime_runners(request: RunnerRequest) -> Runners:
    from .build_engines.export import export_onnx
    from .runners.onnxruntime_runner import OnnxRuntimeRunner

    precision = "fp32" if request.precision == "auto" else request.precision
    stream = _compute_stream(request, request.device)
    with tempfile.TemporaryDirectory(prefix="wav2lip-trt-onnx-") as tmp:
        def runner(model: str, checkpoint: Path) -> OnnxRuntimeRunner:
            path = Path(tmp) / f"{model}.{precision}.onnx"
            export_onnx(model, checkpoint, path, precision=precision)
            return OnnxRuntimeRunner(path, device=request.device, stream=stream)

        generator = runner("wav2lip", request.checkpoint_path) if request.checkpoint_path is not None else None
        detector = runner("s3fd", request.s3fd_checkpoint) if request.s3fd_checkpoint is not None else None
    return Runners(detector, generator, "onnxruntime", precision, stream=stream)


def _tensorrt_runners(request: RunnerRequest) -> Runners:
    from .build_engines.manifest import artifact_paths
    from .runners.tensorrt_runner import TensorRTRunner

    precision = "fp16" if request.precision == "auto" else request.precision
    device = request.device if request.device.type == "cuda" else torch.device("cuda")
    stream = _compute_stream(request, device)

    def runner(model: str, checkpoint: Path) -> TensorRTRunner:
        engine = artifact_paths(request.engines_dir, model, precision).engine
        return TensorRTRunner(engine, checkpoint_path=checkpoint, flavor=request.flavor, device=device, stream=stream)

    generator = runner("wav2lip", request.checkpoint_path) if request.checkpoint_path is not None else None
    detector = runner("s3fd", request.s3fd_checkpoint) if request.s3fd_checkpoint is not None else None
    return Runners(detector, generator, "tensorrt", precision, stream=stream)


def _auto_runners(request: RunnerRequest) -> Runners:
    notes = []
    if request.device.type == "cuda":
        try:
            runners = _tensorrt_runners(request)
            runners.notes.append(f"backend auto: TensorRT engines from {request.engines_dir}")
            return runners
        except Wav2LipTrtError as exc:
            notes.append(f"backend auto: TensorRT not usable ({exc})")
    runners = _torch_runners(request)
    runners.notes = notes + [f"backend auto: torch {runners.precision} on {request.device}"]
    return runners


BACKENDS: dict[str, Callable[[RunnerRequest], Runners]] = {
    "auto": _auto_runners,
    "torch": _torch_runners,
    "onnxruntime": _onnxruntime_runners,
    "tensorrt": _tensorrt_runners,
}


def create_runners(backend: str, request: RunnerRequest) -> Runners:
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise InputError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}") from None
    runners = factory(request)
    for note in runners.notes:
        log.info(note)
    return runners
