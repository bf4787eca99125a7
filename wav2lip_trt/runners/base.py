"""The backend seam: a runner executes one network on named tensors.

Every backend (torch, onnxruntime, TensorRT) implements :class:`Runner`, so the pipeline's
detection and generation stages never know which one they talk to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch

S3FD_INPUTS = ("image",)
S3FD_OUTPUTS = tuple(f"{kind}{level}" for level in range(1, 7) for kind in ("cls", "reg"))
"""Raw S3FD head outputs in network order: cls1, reg1, ..., cls6, reg6 (no softmax)."""

WAV2LIP_INPUTS = ("mel", "face")
WAV2LIP_OUTPUTS = ("pred",)


@runtime_checkable
class Runner(Protocol):
    """Runs one network: tensors in by name, tensors out by name.

    Inputs and outputs live on :attr:`device`; a runner may keep buffers between calls, so it is
    also a context manager that releases them.
    """

    name: str
    device: torch.device
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def infer(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def __enter__(self) -> "Runner": ...

    def __exit__(self, *exc: object) -> None: ...
