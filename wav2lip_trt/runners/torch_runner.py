"""PyTorch backend: the reference the other backends are measured against."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..execution.handoff import on_stream
from .base import runner_stream

log = logging.getLogger(__name__)

_CAPTURE_LOCK = threading.Lock()
"""One CUDA graph capture at a time in the process.

Capture runs in ``thread_local`` mode, so other threads may keep using their own streams, but two
captures at once (or one capture and another thread's ``empty_cache``, which ``torch.cuda.graph``
calls on entry) would race over the caching allocator's pools.
"""


def stage_inputs(static: Sequence[torch.Tensor], args: Sequence[torch.Tensor]) -> int | None:
    """Copies a batch into the leading rows of a graph's static inputs; returns its size, or None.

    None (nothing copied) means the batch does not fit the graph: more rows than it was captured
    with, another per-sample shape or dtype, or inputs of different batch sizes; the caller then
    runs eagerly. Rows past the batch keep what they held: every sample of these networks is
    computed independently of the others (convolutions, eval-mode batch norm), so the padding only
    costs time, and the caller keeps just the first rows of each output (:func:`valid_rows`).
    """
    if len(static) != len(args) or not args:
        return None
    batch = args[0].shape[0]
    for dst, src in zip(static, args):
        if (src.dim() != dst.dim() or src.shape[0] != batch or batch > dst.shape[0]
                or src.shape[1:] != dst.shape[1:] or src.dtype != dst.dtype):
            return None
    for dst, src in zip(static, args):
        dst[:batch].copy_(src)
    return batch


def valid_rows(outputs: Sequence[torch.Tensor], batch: int) -> list[torch.Tensor]:
    """The first ``batch`` rows of each output of a padded replay (views, no copy)."""
    return [out[:batch] for out in outputs]


@dataclass
class _Graph:
    """One captured forward pass at a fixed batch, with the static buffers it reads and writes."""

    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]

    @property
    def batch(self) -> int:
        return self.inputs[0].shape[0]


class TorchRunner:
    """Runs an ``nn.Module`` whose forward takes the inputs positionally in ``input_names`` order.

    FP32 on CPU is bit-for-bit the original implementation's arithmetic as long as inputs arrive with
    the original's strides (they are passed through untouched); ``dtype=torch.float16`` (CUDA) casts
    the module and its floating inputs, ``channels_last`` suits tensor cores, and outputs come back
    as FP32.

    ``cuda_graphs`` (CUDA only) captures one CUDA graph of the forward pass at ``graph_batch`` (the
    first batch seen when None): Wav2Lip's ~100 small kernels per batch cost more to launch from
    Python than to run. A smaller batch (the last one of a video) is padded up to the graph's batch
    and its outputs sliced back; a larger one runs eagerly. One graph per runner bounds the memory
    its private pool holds. Use it for the generator only: S3FD runs at many frame sizes, where
    a graph per shape would cost more memory than its few large kernels lose to launches.

    All CUDA work — input casts, the forward pass, graph capture and replays — runs on
    :attr:`stream` (see :class:`~wav2lip_trt.runners.base.Runner` for the contract).
    """

    def __init__(
        self,
        module: nn.Module,
        input_names: tuple[str, ...],
        output_names: tuple[str, ...],
        *,
        name: str = "torch",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        cuda_graphs: bool = False,
        graph_batch: int | None = None,
        stream: torch.cuda.Stream | None = None,
    ) -> None:
        if graph_batch is not None and graph_batch < 1:
            raise ValueError(f"graph_batch must be at least 1, got {graph_batch}")
        self.name = name
        self.device = torch.device(device)
        self.stream = runner_stream(self.device, stream)
        self.dtype = dtype
        self.input_names = input_names
        self.output_names = output_names
        self.input_dtypes = {n: dtype for n in input_names}
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format
        with on_stream(self.stream):
            self.module = module.to(device=self.device, dtype=dtype, memory_format=self.memory_format).eval()
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.graph_batch = graph_batch
        self._graph: _Graph | None = None

    def infer(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """With ``cuda_graphs`` the outputs may be views of the graph's own buffers: use them (on
        :attr:`stream`) before the next call."""
        with on_stream(self.stream):
            args = [feed[n].to(self.device, self.dtype, memory_format=self.memory_format) for n in self.input_names]
            out = self._replay(args) if self.cuda_graphs else None
            if out is None:
                with torch.inference_mode():
                    out = self.module(*args)
            if isinstance(out, torch.Tensor):
                out = [out]
            if len(out) != len(self.output_names):
                raise RuntimeError(f"{self.name}: expected {len(self.output_names)} outputs, got {len(out)}")
            return {n: t.float() for n, t in zip(self.output_names, out)}

    def _replay(self, args: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """Replays the graph (capturing it on the first batch that fits), or None to run eagerly.

        Called on :attr:`stream`, so ``replay()`` launches there. If capture fails the runner logs
        why, once, and stays eager.
        """
        if self._graph is None:
            batch = args[0].shape[0]
            size = self.graph_batch if self.graph_batch is not None else batch
            if batch > size:
                return None
            try:
                self._graph = self._capture(args, size)
            except RuntimeError as exc:
                log.warning("%s: CUDA graph capture failed, running eagerly (%s)", self.name, exc)
                self.cuda_graphs = False
                return None
            self.graph_batch = size
        batch = stage_inputs(self._graph.inputs, args)
        if batch is None:
            return None
        self._graph.graph.replay()
        return valid_rows(self._graph.outputs, batch)

    def _capture(self, args: list[torch.Tensor], batch: int) -> _Graph:
        """Captures the forward pass at ``batch`` rows (inputs shaped like ``args``) on :attr:`stream`.

        The warm-up runs on :attr:`stream` first, so cuDNN/cuBLAS choose their algorithms and set
        up that stream's workspaces outside the capture; replays then launch on the same stream
        and share those workspaces with the eager work there, in stream order. While the capture
        lasts, no other thread may enqueue on :attr:`stream` (its work would be recorded into the
        graph): the execution model guarantees that, since only the pipeline thread uses the
        compute stream; ``thread_local`` mode lets other threads keep working on their own streams.
        """
        assert self.stream is not None
        static = [torch.zeros((batch, *a.shape[1:]), dtype=a.dtype, device=a.device) for a in args]
        if self.memory_format == torch.channels_last:  # the layout eager inputs arrive in
            static = [s.contiguous(memory_format=torch.channels_last) if s.dim() == 4 else s for s in static]
        if stage_inputs(static, args) is None:
            raise RuntimeError(f"inputs of shapes {[tuple(a.shape) for a in args]} do not fit a graph of batch {batch}")
        with torch.inference_mode():
            for _ in range(2):
                self.module(*static)
        graph = torch.cuda.CUDAGraph()
        with _CAPTURE_LOCK, torch.inference_mode(), \
                torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            out = self.module(*static)
        return _Graph(graph, static, [out] if isinstance(out, torch.Tensor) else list(out))

    def __enter__(self) -> "TorchRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self._graph = None
