"""TensorRT backend: one runner for full TensorRT and TensorRT-RTX engines built by ``build-engines``.

Tensors are bound by name with ``set_tensor_address`` and executed with ``execute_async_v3`` on
the runner's stream (the pipeline's compute stream), so the pipeline's streams and events order
the work. Output buffers are allocated once, at the optimization profile's largest shapes; a
batch above the profile's maximum is run in slices.

Every binding call's result is checked: TensorRT reports a refused shape or address by returning
False (and logging), and enqueueing after an unchecked failure runs the engine on stale bindings —
wrong results, or a crash far from the cause. The alignment and slicing rules are small pure
functions so that they are tested without a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..build_engines.builder import load_tensorrt
from ..build_engines.manifest import check_engine
from ..errors import EngineError
from .base import runner_stream

ALIGNMENT = 256
"""Bytes: TensorRT requires every address given to ``set_tensor_address`` to be 256-byte aligned."""


def is_aligned(address: int, alignment: int = ALIGNMENT) -> bool:
    return address % alignment == 0


def needs_rebase(tensor: torch.Tensor, alignment: int = ALIGNMENT) -> bool:
    """True when ``tensor`` cannot be bound as it is.

    TensorRT reads a dense row-major buffer from an aligned address; a non-contiguous tensor
    (channels-last, transposed) or a view that starts mid-block (``batch[3:]``, a slice of a ring
    buffer) breaks one rule or the other.
    """
    return not tensor.is_contiguous() or not is_aligned(tensor.data_ptr(), alignment)


def rebase(tensor: torch.Tensor, alignment: int = ALIGNMENT, *, label: str = "tensor") -> torch.Tensor:
    """``tensor`` itself when it can be bound, else a dense copy in a block of its own.

    torch's CUDA caching allocator hands out blocks aligned to 512 bytes, so a fresh contiguous
    copy is aligned; that is checked rather than assumed, since binding a misaligned address is
    undefined behaviour.
    """
    if not needs_rebase(tensor, alignment):
        return tensor
    copy = tensor.clone(memory_format=torch.contiguous_format)
    if not is_aligned(copy.data_ptr(), alignment):
        raise EngineError(f"{label}: a fresh copy of shape {tuple(copy.shape)} is at {copy.data_ptr():#x}, "
                          f"not {alignment}-byte aligned as TensorRT requires")
    return copy


def profile_slices(batch: int, max_batch: int) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges of at most ``max_batch`` rows that cover ``batch`` rows in order.

    A slice that starts at a row whose byte offset is not a multiple of :data:`ALIGNMENT` is a
    misaligned view; :func:`rebase` copies such a slice before it is bound (for this project's
    networks a row is a multiple of 256 bytes, so in practice no slice is copied).
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    if batch < 0:
        raise ValueError(f"batch must not be negative, got {batch}")
    return [(start, min(start + max_batch, batch)) for start in range(0, batch, max_batch)]


def bind_input_shape(context: Any, label: str, name: str, shape: Sequence[int],
                     profile: Sequence[Sequence[int]] | None = None) -> None:
    """``set_input_shape``, or :class:`EngineError` naming the engine, tensor, shape and profile."""
    shape = tuple(int(s) for s in shape)
    if not context.set_input_shape(name, shape):
        allowed = f" (its profile allows {tuple(profile[0])}..{tuple(profile[2])})" if profile is not None else ""
        raise EngineError(f"{label}: TensorRT refused shape {shape} for input {name!r}{allowed}")


def bind_address(context: Any, label: str, name: str, tensor: torch.Tensor, alignment: int = ALIGNMENT) -> None:
    """``set_tensor_address`` for a dense, aligned tensor, or :class:`EngineError` saying what is wrong."""
    shape = tuple(tensor.shape)
    if not tensor.is_contiguous():
        raise EngineError(f"{label}: tensor {name!r} of shape {shape} is not contiguous; TensorRT reads dense buffers")
    address = tensor.data_ptr()
    if not is_aligned(address, alignment):
        raise EngineError(f"{label}: tensor {name!r} of shape {shape} is at {address:#x}, "
                          f"not {alignment}-byte aligned as TensorRT requires")
    if not context.set_tensor_address(name, address):
        raise EngineError(f"{label}: TensorRT refused the address {address:#x} of tensor {name!r} (shape {shape})")


def check_shapes_specified(context: Any, label: str, shapes: Mapping[str, Sequence[int]]) -> None:
    """After every ``set_input_shape``: TensorRT can infer all shapes, or :class:`EngineError`.

    ``infer_shapes`` (TensorRT 10+, TensorRT-RTX) names the inputs still unspecified; older
    bindings only have the ``all_binding_shapes_specified`` flag.
    """
    given = ", ".join(f"{n} {tuple(s)}" for n, s in shapes.items())
    infer = getattr(context, "infer_shapes", None)
    if infer is not None:
        try:
            missing = [str(n) for n in infer()]
        except RuntimeError as exc:
            raise EngineError(f"{label}: TensorRT shape inference failed for inputs {given}: {exc}") from None
    else:
        missing = [] if context.all_binding_shapes_specified else ["(not named by this TensorRT)"]
    if missing:
        raise EngineError(f"{label}: input shapes not fully specified: {', '.join(missing)} (given {given})")


def output_shape(context: Any, label: str, name: str, capacity: int | None = None) -> tuple[int, ...]:
    """The shape TensorRT computed for an output, checked to be known and to fit its buffer (if given)."""
    shape = tuple(int(d) for d in context.get_tensor_shape(name))
    if any(d < 0 for d in shape):
        raise EngineError(f"{label}: output {name!r} has unresolved shape {shape} after all inputs were set")
    if capacity is not None and math.prod(shape) > capacity:
        raise EngineError(f"{label}: output {name!r} of shape {shape} exceeds its buffer of {capacity} elements")
    return shape


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT8: torch.int8, trt.DataType.BOOL: torch.bool}
    if hasattr(trt.DataType, "INT64"):
        table[trt.DataType.INT64] = torch.int64
    if dtype not in table:
        raise EngineError(f"engine tensor type {dtype} is not supported by this runner")
    return table[dtype]


class TensorRTRunner:
    """Deserializes a checked engine and runs it on device tensors (inputs by name, outputs by name).

    All work (input casts and copies, the engine, output copies of sliced batches) is enqueued on
    :attr:`stream`; see :class:`~wav2lip_trt.runners.base.Runner` for the contract.
    """

    alignment = ALIGNMENT  # bytes every bound address is aligned to

    def __init__(
        self,
        engine_path: str | Path,
        *,
        checkpoint_path: str | Path,
        flavor: str = "auto",
        device: torch.device | str = "cuda",
        name: str = "tensorrt",
        stream: torch.cuda.Stream | None = None,
    ) -> None:
        if not torch.cuda.is_available():
            raise EngineError(f"{engine_path}: TensorRT engines run on an NVIDIA GPU, and torch sees none")
        self.name = name
        self.engine_path = Path(engine_path)
        self.device = torch.device(device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._label = f"{name} engine {self.engine_path}"
        rt = load_tensorrt(flavor)
        trt = self.trt = rt.module
        props = torch.cuda.get_device_properties(self.device)
        self.manifest = check_engine(
            engine_path, checkpoint_path=checkpoint_path, flavor=rt.flavor.name, version=rt.version,
            compute_capability=(props.major, props.minor), gpu_name=props.name,
        )
        self.stream = runner_stream(self.device, stream)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if self.engine is None:
                raise EngineError(f"{engine_path}: {rt.flavor.label} {rt.version} could not deserialize this engine "
                                  f"on {props.name}; rebuild it with build-engines --force")
            self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError(f"{engine_path}: could not create an execution context (out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = tuple(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = tuple(n for n in names if n not in self.input_names)
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.input_dtypes = {n: self.dtypes[n] for n in self.input_names}
        self.profile = {n: tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(n, 0)) for n in self.input_names}
        self.max_batch = min(p[2][0] for p in self.profile.values())
        self._outputs = self._allocate_outputs()

    def _allocate_outputs(self) -> dict[str, torch.Tensor]:
        """One flat buffer per output, sized for the profile's largest inputs (fresh blocks: aligned)."""
        for n in self.input_names:
            bind_input_shape(self.context, self._label, n, self.profile[n][2], self.profile[n])
        check_shapes_specified(self.context, self._label, {n: self.profile[n][2] for n in self.input_names})
        buffers = {}
        for n in self.output_names:
            shape = output_shape(self.context, self._label, n)
            buffers[n] = torch.empty(math.prod(shape), dtype=self.dtypes[n], device=self.device)
        return buffers

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        low, _, high = self.profile[name]
        if len(shape) != len(low) or any(s < lo or s > hi for s, lo, hi in zip(shape[1:], low[1:], high[1:])):
            raise EngineError(
                f"{self._label}: input {name} of shape {shape} is outside the engine's profile {low}..{high}; rebuild "
                "with larger profile options (build-engines --s3fd-max-size HxW / --s3fd-min-size HxW)"
            )

    def _run(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Binds one batch that fits the profile and enqueues the engine; call on :attr:`stream`."""
        if self.context is None:
            raise EngineError(f"{self._label}: the runner was closed")
        bound: dict[str, torch.Tensor] = {}
        for n in self.input_names:
            t = rebase(feed[n].to(self.device, self.dtypes[n]), self.alignment, label=f"{self._label}: input {n!r}")
            self._check_shape(n, tuple(t.shape))
            bind_input_shape(self.context, self._label, n, t.shape, self.profile[n])
            bind_address(self.context, self._label, n, t, self.alignment)
            bound[n] = t
        check_shapes_specified(self.context, self._label, {n: t.shape for n, t in bound.items()})
        out = {}
        for n in self.output_names:
            shape = output_shape(self.context, self._label, n, self._outputs[n].numel())
            view = self._outputs[n][: math.prod(shape)].view(shape)  # offset 0 of a fresh block: aligned
            bind_address(self.context, self._label, n, view, self.alignment)
            out[n] = view
        if not self._execute():
            shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in bound.items())
            raise EngineError(f"{self._label}: TensorRT failed to enqueue the engine (inputs {shapes})")
        for t in bound.values():
            if t.is_cuda:  # a caller's tensor from another stream's pool stays alive until the engine read it
                t.record_stream(self.stream)
        return out

    def _execute(self) -> bool:
        """Enqueues the engine on :attr:`stream` (never the current or legacy default stream)."""
        assert self.stream is not None
        return bool(self.context.execute_async_v3(self.stream.cuda_stream))

    def infer(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Outputs are FP32 device tensors, valid on :attr:`stream`; when the batch fits the profile
        they are views of the runner's buffers, valid until the next call on this runner."""
        batch = feed[self.input_names[0]].shape[0]
        with torch.cuda.stream(self.stream):
            if batch <= self.max_batch:
                return {n: t.float() for n, t in self._run(feed).items()}
            result: dict[str, torch.Tensor] = {}
            for start, stop in profile_slices(batch, self.max_batch):
                piece = self._run({n: feed[n][start:stop] for n in self.input_names})
                for n, t in piece.items():
                    if n not in result:
                        result[n] = torch.empty((batch, *t.shape[1:]), dtype=torch.float32, device=self.device)
                    result[n][start:stop].copy_(t)  # before the next slice overwrites the buffer (same stream)
            return result

    def __enter__(self) -> "TensorRTRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        if getattr(self, "context", None) is None:
            return
        if self.stream is not None:
            self.stream.synchronize()  # teardown: the engine may still be reading or writing these buffers
        self._outputs.clear()
        self.context = None  # the context goes before the engine, as TensorRT requires
