"""PyTorch backend: the reference the other backends are measured against."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class TorchRunner:
    """Runs an ``nn.Module`` whose forward takes the inputs positionally in ``input_names`` order.

    FP32 on CPU is bit-for-bit the original implementation's arithmetic as long as inputs arrive with
    the original's strides (they are passed through untouched); ``dtype=torch.float16`` (CUDA) casts
    the module and its floating inputs, ``channels_last`` suits tensor cores, and outputs come back
    as FP32.
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
    ) -> None:
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.input_names = input_names
        self.output_names = output_names
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.module = module.to(device=self.device, dtype=dtype, memory_format=self.memory_format).eval()

    def infer(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        args = [feed[n].to(self.device, self.dtype, memory_format=self.memory_format) for n in self.input_names]
        with torch.inference_mode():
            out = self.module(*args)
        if isinstance(out, torch.Tensor):
            out = [out]
        if len(out) != len(self.output_names):
            raise RuntimeError(f"{self.name}: expected {len(self.output_names)} outputs, got {len(out)}")
        return {n: t.float() for n, t in zip(self.output_names, out)}

    def __enter__(self) -> "TorchRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        return None
