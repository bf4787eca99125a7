"""PyTorch backend: the reference the other backends are measured against."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

log = logging.getLogger(__name__)


class TorchRunner:
    """Runs an ``nn.Module`` whose forward takes the inputs positionally in ``input_names`` order.

    FP32 on CPU is bit-for-bit the original implementation's arithmetic as long as inputs arrive with
    the original's strides (they are passed through untouched); ``dtype=torch.float16`` (CUDA) casts
    the module and its floating inputs, ``channels_last`` suits tensor cores, and outputs come back
    as FP32.
    """

    MAX_GRAPHS = 4  # captured shapes kept (full batch, last batch, a halved batch...); each holds its memory

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
    ) -> None:
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.input_names = input_names
        self.output_names = output_names
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.module = module.to(device=self.device, dtype=dtype, memory_format=self.memory_format).eval()
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self._graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], list[torch.Tensor]]] = OrderedDict()

    def infer(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """With ``cuda_graphs`` the outputs may be the graph's own buffers: use them before the next call."""
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
        """Replay a CUDA graph captured for these input shapes (capturing it on first sight).

        Python launch overhead of ~100 small kernels per batch disappears; if capture fails the
        runner logs why and stays eager.
        """
        key = tuple((tuple(a.shape), a.stride(), a.dtype) for a in args)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(args)
            except RuntimeError as exc:
                log.warning("%s: CUDA graph capture failed, running eagerly (%s)", self.name, exc)
                self.cuda_graphs = False
                return None
            self._graphs[key] = entry
            if len(self._graphs) > self.MAX_GRAPHS:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        graph, static_in, static_out = entry
        for dst, src in zip(static_in, args):
            dst.copy_(src)
        graph.replay()
        return static_out

    def _capture(self, args: list[torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, list[torch.Tensor], list[torch.Tensor]]:
        static_in = [a.clone() for a in args]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):  # warm-up: cuDNN picks its algorithms outside the capture
                self.module(*static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            out = self.module(*static_in)
        return graph, static_in, [out] if isinstance(out, torch.Tensor) else list(out)

    def __enter__(self) -> "TorchRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self._graphs.clear()
