"""The streams of one run, created once and passed explicitly to everything that enqueues work."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator

import numpy as np
import torch

from .handoff import PinnedSlab, ReadyBatch, smallest, stall

DEVICE_FRAME_SHARE = 0.25
"""The part of the GPU's memory that frames in flight on the device may take (three generator
batches: being generated, queued for the writer, being read back)."""
HELD_DEVICE_BATCHES = 3


class DeviceContext:
    """The run's device and its three streams (None on the CPU).

    Everything that runs the networks or the kernels around them enqueues on ``compute``:
    runners receive it at construction, kernels run inside :meth:`on_compute`. ``copy`` carries
    the decoder's uploads; ``readback`` the finished frames' copies to the host (enqueued by the
    writer thread, see :class:`Readback`), so uploads and readbacks use the GPU's two copy
    engines and neither waits behind the other or behind the next batch's kernels.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        if self.is_cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        # Made once per run, one after the other, so they are distinct streams of torch's pool.
        self.compute: torch.cuda.Stream | None = torch.cuda.Stream(self.device) if self.is_cuda else None
        self.copy: torch.cuda.Stream | None = torch.cuda.Stream(self.device) if self.is_cuda else None
        self.readback: torch.cuda.Stream | None = torch.cuda.Stream(self.device) if self.is_cuda else None

    @contextlib.contextmanager
    def on_compute(self) -> Iterator[None]:
        """Make the compute stream current in this thread for the launches inside the block."""
        if self.compute is None:
            yield
            return
        with torch.cuda.device(self.device), torch.cuda.stream(self.compute):
            yield

    def to_host(self, tensor: torch.Tensor, out: torch.Tensor) -> ReadyBatch:
        """Copy a small ``tensor`` into ``out`` (pinned host memory) after the compute stream's work so far.

        For what the pipeline thread needs back at once (the packed S3FD boxes); finished frames
        go through :meth:`finished` and a :class:`Readback`. Returns the host tensor with the event
        that says the copy is complete; the caller must not read it before :meth:`ReadyBatch.synchronize`.
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

    def finished(self, frames: torch.Tensor) -> ReadyBatch:
        """Hand ``frames``, made on the compute stream, to another stream: the event after the work so far.

        Nothing is copied here: the consumer (a :class:`Readback` in the writer thread) waits on
        the event on its own stream and ties the memory to that stream.
        """
        if not self.is_cuda:
            return ReadyBatch(frames)
        with self.on_compute():
            stall(self.compute)
            event = torch.cuda.Event()
            event.record(self.compute)
        return ReadyBatch(frames, event)

    def device_batch(self, frame_bytes: int, most: int) -> int:
        """Frames per generator batch on this device: at most ``most``, three batches within
        :data:`DEVICE_FRAME_SHARE` of the GPU's memory (never fewer than 2).

        It depends on the GPU's total memory and the frame size only, not on what is free at the
        moment or on the host's ``--frame-memory``, so a run is batched the same way every time.
        """
        if not self.is_cuda:
            raise ValueError("the device batch is for CUDA runs; the CPU uses the host plan")
        total = torch.cuda.get_device_properties(self.device).total_memory
        fit = int(total * DEVICE_FRAME_SHARE) // (HELD_DEVICE_BATCHES * max(1, frame_bytes))
        return max(2, min(most, fit))


class Readback:
    """Finished frames from the device to the host in chunks, through a ring of pinned slots.

    Used by one thread (the writer): for each batch it makes the readback stream wait for the
    batch's event, ties the batch's memory to that stream (``record_stream``), and copies ``chunk``
    frames at a time into a ring of ``slots`` pinned buffers cut from one :class:`PinnedSlab`, one
    copy ahead of the frames being written. So the host holds ``slots x chunk`` finished frames
    whatever the device batch is. A yielded array is valid until the next one is asked for.
    """

    def __init__(self, context: DeviceContext, chunk: int, frame_shape: tuple[int, ...], slots: int = 2) -> None:
        if chunk < 1:
            raise ValueError(f"a readback chunk needs at least one frame, got {chunk}")
        self.context, self.chunk, self.frame_shape = context, chunk, tuple(frame_shape)
        self.slots = smallest(slots)
        self.slab: PinnedSlab | None = None  # made on first use: a run that fails early pins nothing

    def chunks(self, batch: ReadyBatch) -> Iterator[np.ndarray]:
        """(n, *frame_shape) uint8 host arrays, ``chunk`` frames at a time, in order."""
        tensor = batch.tensor
        if not tensor.is_cuda:
            host = batch.synchronize()
            for start in range(0, host.shape[0], self.chunk):
                yield host[start : start + self.chunk].numpy()
            return
        ctx, stream = self.context, self.context.readback
        assert stream is not None
        if self.slab is None:
            self.slab = PinnedSlab(self.slots * self.chunk * int(np.prod(self.frame_shape)), pin=True)
        slots = self.slab.buffers(self.slots, (self.chunk, *self.frame_shape))
        with torch.cuda.device(ctx.device), torch.cuda.stream(stream):
            if batch.ready is not None:
                stream.wait_event(batch.ready)
            tensor.record_stream(stream)  # the allocator may not reuse it before the copies below ran
        starts = list(range(0, tensor.shape[0], self.chunk))
        pending: deque[tuple[torch.Tensor, torch.cuda.Event]] = deque()

        def enqueue(k: int) -> None:
            part = tensor[starts[k] : starts[k] + self.chunk]
            host = slots[k % self.slots][: part.shape[0]]
            with torch.cuda.device(ctx.device), torch.cuda.stream(stream):
                stall(stream)  # gpu-check's race window: a missing wait on this copy would show in the frames
                host.copy_(part, non_blocking=True)
                event = torch.cuda.Event(blocking=True)  # this thread waits on it: sleep, do not spin
                event.record(stream)
            pending.append((host, event))

        try:
            ahead = 0
            for k in range(len(starts)):
                # slot of chunk k + slots - 1 last held chunk k - 1, which the caller has finished with
                while ahead < len(starts) and ahead < k + self.slots:
                    enqueue(ahead)
                    ahead += 1
                host, event = pending.popleft()
                event.synchronize()
                yield host.numpy()
        finally:
            for _, event in pending:  # a copy still in flight must land before its slot is reused
                event.synchronize()

    def all(self, batch: ReadyBatch) -> np.ndarray:
        """The whole batch on the host at once, in new memory (dumps and tests; not the hot path)."""
        tensor = batch.tensor
        if not tensor.is_cuda:
            return batch.synchronize().numpy().copy()
        ctx, stream = self.context, self.context.readback
        assert stream is not None
        with torch.cuda.device(ctx.device), torch.cuda.stream(stream):
            if batch.ready is not None:
                stream.wait_event(batch.ready)
            tensor.record_stream(stream)
            host = tensor.to("cpu")  # a blocking copy, ordered after the wait on this stream
        return host.numpy()

    def close(self) -> None:
        """Unpin the ring (every copy into it has been waited for by :meth:`chunks`)."""
        if self.slab is not None:
            self.slab.close()
            self.slab = None
