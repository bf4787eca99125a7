"""TensorRT backend: one runner for full TensorRT and TensorRT-RTX engines built by ``build-engines``.

Tensors are bound by name with ``set_tensor_address`` and executed with ``execute_async_v3`` on
the caller's current CUDA stream, so the pipeline's own streams and events order the work. Output
buffers are allocated once, at the optimization profile's largest shapes; a batch above the
profile's maximum is run in slices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..build_engines.builder import load_tensorrt
from ..build_engines.manifest import check_engine
from ..errors import EngineError


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT8: torch.int8, trt.DataType.BOOL: torch.bool}
    if hasattr(trt.DataType, "INT64"):
        table[trt.DataType.INT64] = torch.int64
    if dtype not in table:
        raise EngineError(f"engine tensor type {dtype} is not supported by this runner")
    return table[dtype]


class TensorRTRunner:
    """Deserializes a checked engine and runs it on device tensors (inputs by name, outputs by name)."""

    def __init__(
        self,
        engine_path: str | Path,
        *,
        checkpoint_path: str | Path,
        flavor: str = "auto",
        device: torch.device | str = "cuda",
        name: str = "tensorrt",
    ) -> None:
        if not torch.cuda.is_available():
            raise EngineError(f"{engine_path}: TensorRT engines run on an NVIDIA GPU, and torch sees none")
        self.name = name
        self.device = torch.device(device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        rt = load_tensorrt(flavor)
        trt = self.trt = rt.module
        props = torch.cuda.get_device_properties(self.device)
        self.manifest = check_engine(
            engine_path, checkpoint_path=checkpoint_path, flavor=rt.flavor.name, version=rt.version,
            compute_capability=(props.major, props.minor), gpu_name=props.name,
        )
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
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
        self.profile = {n: tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(n, 0)) for n in self.input_names}
        self.max_batch = min(p[2][0] for p in self.profile.values())
        self._outputs = self._allocate_outputs()

    def _allocate_outputs(self) -> dict[str, torch.Tensor]:
        for n in self.input_names:
            self.context.set_input_shape(n, self.profile[n][2])
        buffers = {}
        for n in self.output_names:
            shape = tuple(self.context.get_tensor_shape(n))
            buffers[n] = torch.empty(math.prod(shape), dtype=self.dtypes[n], device=self.device)
        return buffers

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        low, _, high = self.profile[name]
        if any(s < lo or s > hi for s, lo, hi in zip(shape[1:], low[1:], high[1:])):
            raise EngineError(
                f"input {name} of shape {shape} is outside the engine's profile {low}..{high}; rebuild with "
                "larger profile options (build-engines --s3fd-max-size HxW / --s3fd-min-size HxW)"
            )

    def _run(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keep = []
        for n in self.input_names:
            t = feed[n].to(self.device, self.dtypes[n]).contiguous()
            self._check_shape(n, tuple(t.shape))
            self.context.set_input_shape(n, tuple(t.shape))
            self.context.set_tensor_address(n, t.data_ptr())
            keep.append(t)
        out = {}
        for n in self.output_names:
            shape = tuple(self.context.get_tensor_shape(n))
            view = self._outputs[n][: math.prod(shape)].view(shape)
            self.context.set_tensor_address(n, view.data_ptr())
            out[n] = view
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineError(f"{self.name}: TensorRT failed to enqueue the engine")
        for t in keep:
            t.record_stream(stream)
        return out

    def infer(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Outputs are FP32 device tensors; when the batch fits the profile they are views of the runner's
        buffers, valid until the next call on this runner."""
        batch = next(iter(feed.values())).shape[0]
        if batch <= self.max_batch:
            return {n: t.float() if t.dtype != torch.float32 else t for n, t in self._run(feed).items()}
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in self.output_names}
        for start in range(0, batch, self.max_batch):
            piece = self._run({n: t[start : start + self.max_batch] for n, t in feed.items()})
            for n, t in piece.items():
                parts[n].append(t.float().clone())
        return {n: torch.cat(ts) for n, ts in parts.items()}

    def __enter__(self) -> "TensorRTRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self._outputs.clear()
        del self.context
