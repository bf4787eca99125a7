"""Backend registry: a name maps to a function that builds the detector and generator runners.

Every graph (S3FD, Wav2Lip, the scoring towers) is made into a runner by one function per
backend, :func:`_graph_runners`; :func:`create_graph_runners` serves the scorers.

``auto`` picks TensorRT when usable engines exist for this checkpoint and GPU, else torch-CUDA
FP16, else torch on the CPU, and says which it picked and why.

On CUDA both runners share one compute stream: the request's (the pipeline's), or one created
here when the request has none, so that detection, generation and the kernels around them are
ordered by that stream and by events, never by the current or legacy default stream.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import EngineError, InputError, Wav2LipTrtError
from .options import BACKEND_CHOICES, PRECISION_CHOICES  # noqa: F401  (re-exported)
from .runners.base import Runner

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


@dataclass
class GraphRunners:
    """Runners by graph name, all on one backend, precision and stream."""

    runners: dict[str, Runner]
    backend: str
    precision: str
    stream: torch.cuda.Stream | None = None
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, graph: str) -> Runner:
        return self.runners[graph]

    def __enter__(self) -> "GraphRunners":
        return self

    def __exit__(self, *exc: object) -> None:
        for runner in self.runners.values():
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


def _fixed_precision(backend: str, request: RunnerRequest) -> str:
    if backend == "torch":
        precision = _precision(request)
        if precision == "fp16" and request.device.type != "cuda":
            raise InputError("--precision fp16 with the torch backend needs --device cuda (CPUs have no fast FP16)")
        return precision
    if backend == "onnxruntime":
        return "fp32" if request.precision == "auto" else request.precision
    return "fp16" if request.precision == "auto" else request.precision


def _graph_runners(backend: str, graphs: Mapping[str, Path], request: RunnerRequest) -> GraphRunners:
    """One runner per graph (``s3fd``, ``wav2lip`` or a scoring tower) on one backend and stream.

    The graphs of one checkpoint share one load of it (the expert's two towers are one file).
    """
    from .build_engines.export import model_spec

    precision = _fixed_precision(backend, request)
    device = request.device
    if backend == "tensorrt" and device.type != "cuda":
        if not torch.cuda.is_available():
            raise EngineError("TensorRT engines run on an NVIDIA GPU, and torch sees none")
        # the pipeline would keep its frames on the host and read the engines' outputs off their stream
        raise InputError("--backend tensorrt runs TensorRT engines on the GPU: use --device cuda or auto, not cpu")
    stream = _compute_stream(request, device)
    runners: dict[str, Runner] = {}
    try:
        if backend == "tensorrt":
            from .build_engines.manifest import artifact_paths
            from .runners.tensorrt_runner import TensorRTRunner

            for graph, checkpoint in graphs.items():
                engine = artifact_paths(request.engines_dir, graph, precision).engine
                runners[graph] = TensorRTRunner(engine, checkpoint_path=checkpoint, flavor=request.flavor,
                                                device=device, stream=stream)
            return GraphRunners(runners, backend, precision, stream)
        from .checkpoints import load_network

        networks: dict[tuple[str, Path], nn.Module] = {}

        def module(graph: str, checkpoint: Path) -> nn.Module:
            spec = model_spec(graph)
            key = (spec.network, checkpoint)
            if key not in networks:
                networks[key] = load_network(spec.network, checkpoint)
            return spec.module(networks[key])

        if backend == "torch":
            from .build_engines.precision import half_with_policy
            from .runners.torch_runner import TorchRunner

            on_gpu = device.type == "cuda"  # channels-last suits tensor cores
            for graph, checkpoint in graphs.items():
                spec, net = model_spec(graph), module(graph, checkpoint)
                if precision == "fp16":
                    net = half_with_policy(net)  # S3FD's L2Norm stays FP32: its sum of squares overflows FP16
                # A CUDA graph removes the generator's launch overhead at its one fixed batch; S3FD gets none:
                # it runs at every frame size, and its few large kernels lose little to launches.
                generator = graph == "wav2lip"
                runners[graph] = TorchRunner(
                    net, spec.input_names, spec.output_names, name="torch", device=device,
                    dtype=torch.float16 if precision == "fp16" else torch.float32, channels_last=on_gpu,
                    cuda_graphs=on_gpu and generator, graph_batch=request.generator_batch if generator else None,
                    stream=stream)
            return GraphRunners(runners, backend, precision, stream)
        from .build_engines.export import onnx_model
        from .files import atomic_write_bytes
        from .runners.onnxruntime_runner import OnnxRuntimeRunner

        with tempfile.TemporaryDirectory(prefix="wav2lip-trt-onnx-") as tmp:  # a session keeps its graph
            for graph, checkpoint in graphs.items():
                path = Path(tmp) / f"{graph}.{precision}.onnx"
                atomic_write_bytes(path, onnx_model(module(graph, checkpoint), graph, precision)[0].SerializeToString())
                runners[graph] = OnnxRuntimeRunner(path, device=device, stream=stream)
        return GraphRunners(runners, backend, precision, stream)
    except BaseException:
        for runner in runners.values():
            runner.__exit__(None, None, None)
        raise


def _pipeline_runners(backend: str) -> Callable[[RunnerRequest], Runners]:
    def create(request: RunnerRequest) -> Runners:
        graphs = {"wav2lip": request.checkpoint_path, "s3fd": request.s3fd_checkpoint}
        made = _graph_runners(backend, {g: Path(c) for g, c in graphs.items() if c is not None}, request)
        return Runners(made.runners.get("s3fd"), made.runners.get("wav2lip"), backend, made.precision,
                       stream=made.stream)

    return create


_torch_runners = _pipeline_runners("torch")
_onnxruntime_runners = _pipeline_runners("onnxruntime")
_tensorrt_runners = _pipeline_runners("tensorrt")


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


def create_graph_runners(backend: str, graphs: Mapping[str, Path], request: RunnerRequest) -> GraphRunners:
    """Runners for any graphs (the scoring towers: ``expert_face``, ``disc_qual`` ...) by checkpoint.

    ``backend`` is a concrete backend (the one the pipeline's runners resolved to, so scoring runs
    where generation runs) or ``auto``: TensorRT when the engines load, else torch. Only
    ``request.device``, ``precision``, ``engines_dir``, ``flavor`` and ``stream`` are used.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend != "auto":
        return _graph_runners(backend, graphs, request)
    notes = []
    if request.device.type == "cuda":
        try:
            made = _graph_runners("tensorrt", graphs, request)
            made.notes.append(f"backend auto: TensorRT engines from {request.engines_dir}")
            return made
        except Wav2LipTrtError as exc:
            notes.append(f"backend auto: TensorRT not usable ({exc})")
    made = _graph_runners("torch", graphs, request)
    made.notes = notes + [f"backend auto: torch {made.precision} on {request.device}"]
    return made


def create_runners(backend: str, request: RunnerRequest) -> Runners:
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise InputError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}") from None
    runners = factory(request)
    for note in runners.notes:
        log.info(note)
    return runners
