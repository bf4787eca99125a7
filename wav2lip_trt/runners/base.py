"""The backend seam: a runner executes one network on named tensors.

Every backend (torch, onnxruntime, TensorRT) implements :class:`Runner`, so the pipeline's
detection and generation stages never know which one they talk to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch

from ..tensor_names import S3FD_INPUTS, S3FD_OUTPUTS, WAV2LIP_INPUTS, WAV2LIP_OUTPUTS

__all__ = ["S3FD_INPUTS", "S3FD_OUTPUTS", "WAV2LIP_INPUTS", "WAV2LIP_OUTPUTS", "Runner", "runner_stream"]


@runtime_checkable
class Runner(Protocol):
    """Runs one network: tensors in by name, tensors out by name.

    Inputs and outputs live on :attr:`device`; a runner may keep buffers between calls, so it is
    also a context manager that releases them.

    **Stream contract (CUDA).** :attr:`stream` is the one CUDA stream a runner works on: it is
    the stream given to its constructor (the pipeline's compute stream, shared by both networks
    and the kernels around them) or, when none was given, a stream of its own — never the
    current or the legacy default stream, so no work of the runner is ordered implicitly behind
    unrelated work. :meth:`infer` enqueues everything it does on :attr:`stream`; the caller
    guarantees that the inputs are ready on that stream (it produced them there, or made the
    stream wait on their event), and the outputs are valid on that stream: a consumer on another
    stream waits on an event recorded on :attr:`stream` first. On the CPU :attr:`stream` is None.

    :attr:`input_dtypes` is the dtype each input is wanted in (the torch runner's dtype, the
    engine's tensor dtype, float32 for ONNX Runtime), so a caller can build inputs directly in it
    instead of casting twice; other dtypes are accepted and cast.
    """

    name: str
    device: torch.device
    stream: torch.cuda.Stream | None
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_dtypes: dict[str, torch.dtype]

    def infer(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def __enter__(self) -> "Runner": ...

    def __exit__(self, *exc: object) -> None: ...


def runner_stream(device: torch.device, stream: torch.cuda.Stream | None) -> torch.cuda.Stream | None:
    """The stream a runner on ``device`` works on: ``stream`` if given, else a new one of its own.

    A fresh stream rather than ``torch.cuda.current_stream()``: the current stream is whatever the
    calling thread last selected (often the legacy default stream, which serialises with every
    other stream), and work must never land there by accident. CPU runners have no stream.
    """
    if device.type != "cuda":
        if stream is not None:
            raise ValueError(f"a runner on {device} takes no CUDA stream")
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    if stream is None:
        return torch.cuda.Stream(torch.device("cuda", index))
    if stream.device.index != index:
        raise ValueError(f"the runner's stream is on {stream.device} but the runner runs on cuda:{index}")
    return stream
