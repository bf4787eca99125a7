"""The one module that talks to TensorRT: parse an ONNX file, inspect the network, build a plan.

Full TensorRT (``tensorrt``, 10 or later) and TensorRT-RTX (``tensorrt_rtx_bindings``) share the
API used here: strongly typed networks, the ONNX parser, optimization profiles, memory-pool
limits, timing caches and progress monitors. Their one difference that matters for building is
data in :class:`Flavor`: TensorRT-RTX compiles ahead of time for chosen compute capabilities
(with or without a GPU), full TensorRT builds for the GPU it runs on; full TensorRT's timing cache
speeds up rebuilds, TensorRT-RTX's is a documented no-op and is left out.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import EngineError, MissingDependencyError
from ..progress import Progress
from ..files import atomic_write_bytes

log = logging.getLogger(__name__)

FLAVOR_CHOICES = ("auto", "tensorrt", "tensorrt-rtx")

RTX_PORTABLE_TARGETS = ("8.0", "8.6", "8.9", "12.0", "12.1")
"""GPUs an RTX engine built without explicit targets is accepted on.

Such a plan carries Ampere (sm80) code that TensorRT-RTX compiles for the actual GPU when the
engine first runs; Turing (7.5) needs an explicit ``sm75`` build and Hopper (9.0) is not supported.
"""


@dataclass(frozen=True)
class Flavor:
    """One TensorRT distribution."""

    name: str  # as written on the command line and in manifests
    label: str  # for messages
    modules: tuple[str, ...]  # import names, first found wins
    install: str  # how to get it, for the missing-package error
    chooses_targets: bool  # compiles for chosen compute capabilities instead of the build GPU
    timing_cache: bool  # False where the timing cache is a no-op (TensorRT-RTX: it cannot even reload its own)


FLAVORS: dict[str, Flavor] = {
    "tensorrt": Flavor(
        "tensorrt", "TensorRT", ("tensorrt",),
        "pip install tensorrt-cu13 --extra-index-url https://pypi.nvidia.com (NVIDIA's index)",
        chooses_targets=False, timing_cache=True,
    ),
    "tensorrt-rtx": Flavor(
        "tensorrt-rtx", "TensorRT-RTX", ("tensorrt_rtx_bindings", "tensorrt_rtx"),
        "pip install 'wav2lip-trt[rtx]'", chooses_targets=True, timing_cache=False,
    ),
}


@dataclass(frozen=True)
class TensorRT:
    """An imported TensorRT flavour."""

    flavor: Flavor
    module: ModuleType

    @property
    def version(self) -> str:
        return str(self.module.__version__)


def load_tensorrt(flavor: str = "auto") -> TensorRT:
    """Imports the requested flavour; ``auto`` prefers full TensorRT, then TensorRT-RTX."""
    if flavor not in FLAVOR_CHOICES:
        raise EngineError(f"unknown TensorRT flavour {flavor!r}; choose one of: {', '.join(FLAVOR_CHOICES)}")
    wanted = list(FLAVORS.values()) if flavor == "auto" else [FLAVORS[flavor]]
    for candidate in wanted:
        for name in candidate.modules:
            try:
                return TensorRT(candidate, importlib.import_module(name))
            except ImportError:
                continue
    if flavor == "auto":
        raise MissingDependencyError(
            "building engines needs TensorRT-RTX or TensorRT: pip install 'wav2lip-trt[rtx]' "
            "(or NVIDIA's tensorrt for Hopper GPUs such as H100/H200)"
        )
    raise MissingDependencyError(f"--flavor {flavor} needs {FLAVORS[flavor].label}: {FLAVORS[flavor].install}")


@dataclass(frozen=True)
class ShapeRange:
    """Min/opt/max shape of one dynamic network input (an optimization profile entry)."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class BuildSettings:
    workspace_bytes: int | None = None  # None = TensorRT's default (the device's memory)
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX targets ("8.6", "current"); () = portable
    timing_cache: Path | None = None  # read before and written after the build


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # numpy-style: float32, float16, int64 ...
    shape: tuple[int, ...]  # -1 for a dynamic axis


@dataclass(frozen=True)
class NetworkSummary:
    """What the parser produced, checked before spending time on a build."""

    layers: int
    layer_types: dict[str, int]
    tensor_dtypes: dict[str, int]  # layer outputs per dtype
    layer_dtypes: dict[str, tuple[str, ...]]  # layer name -> its output dtypes
    layer_kinds: dict[str, str]  # layer name -> layer type (CONVOLUTION, REDUCE, ...)
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def compute_layers(self, dtype: str) -> list[str]:
        """Layers that compute (not casts, constants or shape plumbing) with an output of ``dtype``."""
        plumbing = {"CAST", "CONSTANT", "SHAPE", "SHUFFLE", "SLICE", "GATHER", "CONCATENATION", "IDENTITY"}
        return sorted(name for name, dtypes in self.layer_dtypes.items()
                      if dtype in dtypes and self.layer_kinds[name] not in plumbing)

    def describe(self) -> str:
        dtypes = ", ".join(f"{n} {d}" for d, n in sorted(self.tensor_dtypes.items()))
        return f"{self.layers} layers, tensors: {dtypes}"


@dataclass(frozen=True)
class BuiltEngine:
    path: Path
    bytes: int
    seconds: float
    network: NetworkSummary
    compute_capabilities: tuple[str, ...] = ()  # what was requested


_DTYPES = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
    "INT64": "int64", "UINT8": "uint8", "BOOL": "bool", "FP8": "float8", "INT4": "int4", "FP4": "float4",
}


def _dtype(value: Any) -> str:
    return _DTYPES.get(value.name, value.name.lower())


def _logger(trt: ModuleType) -> Any:
    """A TensorRT logger that keeps errors for the exception and forwards warnings to logging."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(msg)
                log.debug("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.INFO:
                log.debug("TensorRT: %s", msg)

    return Logger()


def _monitor(trt: ModuleType, progress: Progress) -> Any:
    """Shows the top-level build phase's steps on the progress bar."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.top: str | None = None

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None and self.top is None:
                self.top = phase_name
                progress.start(num_steps)
            log.debug("TensorRT phase: %s (%d steps)", phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            if phase_name == self.top:
                progress.update(step + 1)
            return True

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Monitor()


@dataclass
class _Parsed:
    builder: Any
    network: Any
    parser: Any
    logger: Any


def _parse(rt: TensorRT, onnx_path: Path) -> _Parsed:
    trt = rt.module
    if not Path(onnx_path).is_file():
        raise EngineError(f"{onnx_path}: ONNX file not found")
    logger = _logger(trt)
    try:
        builder = trt.Builder(logger)
    except (RuntimeError, TypeError) as exc:
        detail = logger.errors[-1] if logger.errors else str(exc)
        hint = "" if rt.flavor.chooses_targets else " (no GPU? TensorRT-RTX builds without one: --flavor tensorrt-rtx)"
        raise EngineError(f"{rt.flavor.label} could not start a builder: {detail}{hint}") from None
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)) or parser.num_errors:
        first = parser.get_error(0) if parser.num_errors else None
        if first is None:
            detail = logger.errors[-1] if logger.errors else "unknown error"
        else:
            where = f" at node {first.node_name() or first.node()} ({first.node_operator()})" if first.node() >= 0 else ""
            detail = f"{first.code().name}{where}: {first.desc()}"
        more = f" (+{parser.num_errors - 1} more)" if parser.num_errors > 1 else ""
        raise EngineError(f"{onnx_path}: the {rt.flavor.label} ONNX parser failed{more}: {detail}")
    return _Parsed(builder, network, parser, logger)


def _tensor(tensor: Any) -> TensorInfo:
    return TensorInfo(tensor.name, _dtype(tensor.dtype), tuple(int(d) for d in tensor.shape))


def summarize_network(network: Any) -> NetworkSummary:
    layer_types: Counter[str] = Counter()
    tensor_dtypes: Counter[str] = Counter()
    layer_dtypes: dict[str, tuple[str, ...]] = {}
    layer_kinds: dict[str, str] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        layer_kinds[layer.name] = layer.type.name
        layer_types[layer.type.name] += 1
        dtypes = tuple(_dtype(layer.get_output(j).dtype) for j in range(layer.num_outputs))
        tensor_dtypes.update(dtypes)
        layer_dtypes[layer.name] = dtypes
    return NetworkSummary(
        layers=network.num_layers,
        layer_types=dict(sorted(layer_types.items())),
        tensor_dtypes=dict(sorted(tensor_dtypes.items())),
        layer_dtypes=layer_dtypes,
        layer_kinds=layer_kinds,
        inputs=tuple(_tensor(network.get_input(i)) for i in range(network.num_inputs)),
        outputs=tuple(_tensor(network.get_output(i)) for i in range(network.num_outputs)),
    )


def inspect_onnx(rt: TensorRT, onnx_path: str | Path) -> NetworkSummary:
    """Parses an ONNX file into a strongly typed network and describes it (no build)."""
    return summarize_network(_parse(rt, Path(onnx_path)).network)


def resolve_targets(rt: TensorRT, names: tuple[str, ...]) -> list[Any]:
    """Compute capability names ("8.6", "current") as this flavour's enum values; checked before any work."""
    if not names:
        return []
    if not rt.flavor.chooses_targets:
        raise EngineError(
            f"--compute-capabilities is a TensorRT-RTX option; {rt.flavor.label} builds for the GPU it runs on"
        )
    enum = rt.module.ComputeCapability
    supported = sorted((m for m in dir(enum) if m.startswith("SM")), key=lambda m: (int(m[2:-1]), int(m[-1])))
    values = []
    for name in names:
        member = "CURRENT" if name == "current" else "SM" + name.replace(".", "")
        if not hasattr(enum, member):
            hint = " (Hopper H100/H200 engines need NVIDIA's full TensorRT: --flavor tensorrt)" if name.startswith("9.") else ""
            choices = ", ".join(f"{m[2:-1]}.{m[-1]}" for m in supported)
            raise EngineError(f"{rt.flavor.label} {rt.version} cannot target compute capability {name}{hint}; "
                              f"it supports: {choices}, current")
        values.append(getattr(enum, member))
    return values


def _load_timing_cache(config: Any, path: Path) -> Any:
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        log.info("timing cache %s does not match this TensorRT/GPU; starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def _save_timing_cache(config: Any, path: Path) -> None:
    atomic_write_bytes(path, memoryview(config.get_timing_cache().serialize()))


def build_engine(
    rt: TensorRT,
    onnx_path: str | Path,
    engine_path: str | Path,
    profile: Mapping[str, ShapeRange],
    settings: BuildSettings = BuildSettings(),
    *,
    label: str = "engine",
    show_progress: bool = True,
    float32_layers: Collection[str] = (),
) -> BuiltEngine:
    """Parses, inspects and builds one engine; writes the plan (and timing cache) atomically.

    ``float32_layers`` names layers (ONNX node names) that must compute in FP32 in the parsed
    network, e.g. the FP16 policy's; the build stops before it starts if the parser typed one otherwise.
    """
    trt = rt.module
    start = time.perf_counter()
    parsed = _parse(rt, Path(onnx_path))
    summary = summarize_network(parsed.network)
    log.info("%s: parsed %s", label, summary.describe())
    present = [name for name in float32_layers if name in summary.layer_dtypes]
    if float32_layers and not present:
        raise EngineError(f"{label}: none of the layers that must stay FP32 is in the parsed network")
    wrong = [name for name in present if summary.layer_dtypes[name] != ("float32",)]
    if wrong:
        raise EngineError(f"{label}: layer {wrong[0]} must compute in FP32 but the parsed network has "
                          f"{', '.join(summary.layer_dtypes[wrong[0]])}")

    config = parsed.builder.create_builder_config()
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # FP32 layers stay IEEE FP32, not TensorRT's default TF32
    if settings.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_bytes))
    targets = resolve_targets(rt, settings.compute_capabilities)
    if targets:
        config.num_compute_capabilities = len(targets)
        for index, target in enumerate(targets):
            config.set_compute_capability(target, index)
    dynamic = {i.name for i in summary.inputs if -1 in i.shape}
    missing = sorted(dynamic - set(profile))
    if missing:
        raise EngineError(f"{label}: no profile shapes for dynamic input(s) {', '.join(missing)}")
    shapes = parsed.builder.create_optimization_profile()
    for name, rng in profile.items():
        try:
            shapes.set_shape(name, rng.min, rng.opt, rng.max)
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"{label}: invalid profile for input {name!r}: {exc}") from None
    config.add_optimization_profile(shapes)
    timing_cache = settings.timing_cache if rt.flavor.timing_cache else None
    cache = None if timing_cache is None else _load_timing_cache(config, timing_cache)

    with Progress(f"building {label}", unit="step", enabled=show_progress) as progress:
        config.progress_monitor = _monitor(trt, progress)
        plan = parsed.builder.build_serialized_network(parsed.network, config)
    if plan is None:
        detail = parsed.logger.errors[-1] if parsed.logger.errors else "no reason given"
        raise EngineError(f"{label}: the {rt.flavor.label} build failed: {detail}")
    data = memoryview(plan)
    if data.nbytes == 0:
        raise EngineError(f"{label}: the {rt.flavor.label} build produced an empty engine")
    atomic_write_bytes(Path(engine_path), data)
    if timing_cache is not None:
        _save_timing_cache(config, timing_cache)
    del cache  # the builder needed it alive until here
    return BuiltEngine(
        path=Path(engine_path), bytes=data.nbytes, seconds=time.perf_counter() - start, network=summary,
        compute_capabilities=settings.compute_capabilities,
    )
