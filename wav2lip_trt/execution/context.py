"""The streams of one run, created once and passed explicitly to everything that enqueues work."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .handoff import PinnedPool, ReadyBatch, stall


class DeviceContext:
    """The run's device and its two streams (None on the CPU).

    Everything that runs the networks or the kernels around them enqueues on ``compute``:
    runners receive it at construction, kernels run inside :meth:`on_compute`. ``copy`` carries
    the decoder's uploads.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        if self.is_cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        # Made once per run, one after the other, so they are two distinct streams of torch's pool.
        self.compute: torch.cuda.Stream | None = torch.cuda.Stream(self.device) if self.is_cuda else None
        self.copy: torch.cuda.Stream | None = torch.cuda.Stream(self.device) if self.is_cuda else None

    @contextlib.contextmanager
    def on_compute(self) -> Iterator[None]:
        """Make the compute stream current in this thread for the launches inside the block."""
        if self.compute is None:
            yield
            return
        with torch.cuda.device(self.device), torch.cuda.stream(self.compute):
            yield

    def to_host(self, tensor: torch.Tensor, out: torch.Tensor) -> ReadyBatch:
        """Copy ``tensor`` into ``out`` (pinned host memory) after the compute stream's work so far.

        Returns the host tensor with the event that says the copy is complete; the caller must not
        read it before :meth:`ReadyBatch.synchronize`.
        """
        if not self.is_cuda:
            out.copy_(tensor)
            return ReadyBatch(out)
        with self.on_compute():
            stall(self.compute)
            out.copy_(tensor, non_blocking=True)
            event = torch.cuda.Event(blocking=True)  # the host waits on it: sleep, do not spin a core
            event.record(self.compute)
        return ReadyBatch(out, event)

    def pinned_pool(self, count: int, frames: int, height: int, width: int) -> PinnedPool:
        return PinnedPool(count, frames, height, width, pin=self.is_cuda)
