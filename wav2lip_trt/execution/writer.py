"""Encoding in its own thread, behind a bounded queue, in frame order."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

import numpy as np

from .context import Readback
from .handoff import ReadyBatch


class FrameSink(Protocol):
    """What the writer feeds: :class:`wav2lip_trt.encode.VideoWriter` (``write`` one frame, BGR or yuv420p)."""

    def write(self, frame: np.ndarray) -> None: ...


@dataclass
class FinishedBatch:
    """Finished frames of consecutive output indices: host arrays, or a device batch and how it reaches the host.

    ``frames`` is a list of (H, W, 3) uint8 BGR host arrays (the CPU path), or a :class:`ReadyBatch`
    of a (B, H, W, 3) uint8 BGR or (B, H' W' 3 / 2) uint8 ``yuv420p`` tensor with the event after
    which it may be read; a device tensor comes with the ``readback`` that copies it out.
    """

    first_index: int
    frames: ReadyBatch | list[np.ndarray]
    release: Callable[[], None] = field(default=lambda: None)  # gives a pooled host buffer back
    readback: Readback | None = None

    def host_chunks(self) -> Iterator[Sequence[np.ndarray]]:
        """The frames on the host, a chunk at a time (the writer's way: each chunk valid until the next)."""
        if isinstance(self.frames, list):
            yield self.frames
        elif self.readback is not None:
            yield from self.readback.chunks(self.frames)
        else:
            yield self.frames.synchronize().numpy()

    def host_frames(self) -> Sequence[np.ndarray]:
        """All frames on the host at once, in memory of their own when they come from the device (dumps, tests)."""
        if isinstance(self.frames, list):
            return self.frames
        if self.readback is not None:
            return self.readback.all(self.frames)
        return self.frames.synchronize().numpy()


_DONE = object()


class WriterThread:
    """Feeds finished batches to a sink from a worker thread, at most ``depth`` batches behind.

    ``on_frame(written)`` is called after every frame (from the worker thread), and ``extra(index,
    frame)`` lets the caller save each frame as well. The first error in the worker is raised by
    the next :meth:`put` and by the exit of the ``with`` block; after it the worker only drains and
    releases buffers, so the producer never blocks on a dead consumer. ``stop`` is set when either
    side fails (a producer waiting on something the writer would give back can watch it).

    Device batches are read back here, in this thread (:class:`~wav2lip_trt.execution.context.Readback`),
    so the pipeline thread goes on to the next batch as soon as it has handed one over.
    """

    def __init__(self, sink: FrameSink, *, depth: int = 1, on_frame: Callable[[int], None] | None = None,
                 extra: Callable[[int, np.ndarray], None] | None = None, busy: Callable[[float, int], None] | None = None,
                 stop: threading.Event | None = None) -> None:
        self.sink, self.on_frame, self.extra, self.busy = sink, on_frame, extra, busy
        self.written = 0
        self.stop = stop if stop is not None else threading.Event()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="wav2lip-trt-writer", daemon=True)

    def __enter__(self) -> "WriterThread":
        self._thread.start()
        return self

    def put(self, batch: FinishedBatch) -> None:
        """Queue a batch; blocks while the queue is full; raises the worker's error if it failed."""
        while True:
            self._raise_failure(batch)
            try:
                self._queue.put(batch, timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise_failure(self, batch: FinishedBatch | None = None) -> None:
        if self._error is not None:
            if batch is not None:
                batch.release()
            raise self._error

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            assert isinstance(item, FinishedBatch)
            try:
                if self._error is None and not self.stop.is_set():
                    self._write(item, time.perf_counter())
            except BaseException as exc:  # handed to the producer
                self._error = exc
                self.stop.set()
            finally:
                item.release()
            item = None  # a device batch's memory goes back now, not when the next batch arrives

    def _write(self, item: FinishedBatch, start: float) -> None:
        index = item.first_index
        chunks = item.host_chunks()
        try:
            for frames in chunks:
                for frame in frames:
                    self.sink.write(frame)
                    if self.extra is not None:
                        self.extra(index, frame)
                    index += 1
                    self.written += 1
                    if self.on_frame is not None:
                        self.on_frame(self.written)
        finally:
            chunks.close()  # a copy still in flight lands before its slot can be reused
        if self.busy is not None:
            self.busy(time.perf_counter() - start, index - item.first_index)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.stop.set()  # the sink is about to be torn down: write nothing more
            self._drain()
        while self._thread.is_alive():
            try:
                self._queue.put(_DONE, timeout=0.1)
                break
            except queue.Full:
                if exc_type is not None:
                    self._drain()
        # After an error the caller tears the sink down next (killing ffmpeg ends a pending write),
        # so wait only briefly; after success wait for the last frame.
        self._thread.join(timeout=None if exc_type is None else 2.0)
        if exc_type is None:
            self._raise_failure()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end (after the ``with`` block, whose exit on an error waits only briefly);
        True once it has: nothing it holds (a readback ring) is read any more."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, FinishedBatch):
                item.release()
