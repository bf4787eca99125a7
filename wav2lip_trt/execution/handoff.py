"""The hand-off objects: a tensor travels between threads and streams only with its ready event."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


STALL_ENV = "WAV2LIP_TRT_TEST_STALL_US"
"""Test-only (gpu-check's determinism step): microseconds of GPU sleep enqueued on the producer's stream
before each hand-off, with one ring slot and one pool buffer, so that a missing wait changes the frames."""


def stall(stream: "torch.cuda.Stream | None") -> None:
    """Widen the race window before a hand-off when :data:`STALL_ENV` is set; nothing otherwise."""
    micros = int(os.environ.get(STALL_ENV) or 0)
    if micros > 0 and stream is not None:
        with torch.cuda.stream(stream):
            torch.cuda._sleep(micros * 2000)  # cycles: about 2 GHz, so at least ``micros`` on an H100/H200


def smallest(count: int) -> int:
    """``count`` ring slots or pool buffers, or 1 while :data:`STALL_ENV` widens the race windows."""
    return 1 if int(os.environ.get(STALL_ENV) or 0) > 0 else count


def on_stream(stream: "torch.cuda.Stream | None") -> contextlib.AbstractContextManager[object]:
    """``stream`` current in this thread for the block (so its launches land there); None (the CPU): nothing."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


@dataclass
class ReadyBatch:
    """A tensor and the event after which it may be read.

    ``ready`` is None when the tensor is usable as it is (host memory written by the host, or
    device memory produced on the stream that will use it).
    """

    tensor: torch.Tensor
    ready: "torch.cuda.Event | None" = None

    def wait(self, stream: "torch.cuda.Stream | None") -> torch.Tensor:
        """Order ``stream``'s later work after the producer's, and tie the memory to ``stream``.

        Enqueues a wait; never blocks the calling thread. ``record_stream`` keeps the caching
        allocator from reusing the block (allocated on the producer's stream) before ``stream``
        is done with it.
        """
        if stream is not None and self.tensor.is_cuda:
            if self.ready is not None:
                stream.wait_event(self.ready)
            self.tensor.record_stream(stream)
        return self.tensor

    def synchronize(self) -> torch.Tensor:
        """Block the calling thread until the tensor may be read on the host."""
        if self.ready is not None:
            self.ready.synchronize()
        return self.tensor


class PinnedPool:
    """A fixed set of host buffers for device-to-host copies of finished frames.

    Pinned on CUDA so the copy is asynchronous (a pageable copy blocks the launching thread).
    ``acquire`` blocks while every buffer is out, which bounds the frames in flight towards the
    encoder; a buffer comes back through the release function handed out with it.
    """

    def __init__(self, count: int, frames: int, height: int, width: int, *, pin: bool) -> None:
        if count < 1 or frames < 1:
            raise ValueError(f"a pool needs at least one buffer of one frame, got {count} x {frames}")
        self.shape = (frames, height, width, 3)
        self.pin = pin
        self._free: queue.Queue[torch.Tensor] = queue.Queue()
        self._made = 0
        self._count = smallest(count)
        self._lock = threading.Lock()

    def acquire(self, frames: int, stop: threading.Event | None = None) -> tuple[torch.Tensor, Callable[[], None]]:
        """A (frames, H, W, 3) uint8 view of a free buffer, and the function that returns it."""
        if frames > self.shape[0]:
            raise ValueError(f"{frames} frames do not fit a pool buffer of {self.shape[0]}")
        buffer = self._take(stop)
        return buffer[:frames], lambda: self._free.put(buffer)

    def _take(self, stop: threading.Event | None) -> torch.Tensor:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._made < self._count:  # buffers are made on first need: a short run pins little
                self._made += 1
                return torch.empty(self.shape, dtype=torch.uint8, pin_memory=self.pin)
        while True:
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                if stop is not None and stop.is_set():
                    raise RuntimeError("the frame writer stopped while a buffer was awaited") from None


def upload(array: np.ndarray | torch.Tensor, device: torch.device, stream: "torch.cuda.Stream | None") -> torch.Tensor:
    """Small per-batch parameters (boxes, chunk starts) to ``device`` without blocking the thread.

    On CUDA: pinned staging, then a non-blocking copy enqueued on ``stream``; the staging buffer is
    held by torch's host allocator until the copy has run. Elsewhere: the tensor itself.
    """
    host = torch.as_tensor(array)
    if device.type != "cuda":
        return host.to(device)
    assert stream is not None, "a CUDA upload needs the stream it is ordered on"
    with torch.cuda.stream(stream):
        staged = host.pin_memory()
        stall(stream)
        return staged.to(device, non_blocking=True)
