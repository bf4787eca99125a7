"""Encoding in its own thread, behind a bounded queue, in frame order."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

import numpy as np

from .handoff import ReadyBatch


class FrameSink(Protocol):
    """What the writer feeds: :class:`wav2lip_trt.encode.VideoWriter` (``write`` one BGR frame)."""

    def write(self, frame: np.ndarray) -> None: ...


@dataclass
class FinishedBatch:
    """Finished frames of consecutive output indices, on the host once ``frames`` is ready."""

    first_index: int
    frames: ReadyBatch | list[np.ndarray]  # (B, H, W, 3) uint8 host tensor + event, or host arrays
    release: Callable[[], None] = field(default=lambda: None)  # gives a pooled buffer back

    def host_frames(self) -> Sequence[np.ndarray]:
        if isinstance(self.frames, ReadyBatch):
            return self.frames.synchronize().numpy()
        return self.frames


_DONE = object()


class WriterThread:
    """Feeds finished batches to a sink from a worker thread, at most ``depth`` batches behind.

    ``on_frame(written)`` is called after every frame (from the worker thread), and ``extra(index,
    frame)`` lets the caller save each frame as well. The first error in the worker is raised by
    the next :meth:`put` and by the exit of the ``with`` block; after it the worker only drains and
    releases buffers, so the producer never blocks on a dead consumer.
    """

    def __init__(self, sink: FrameSink, *, depth: int = 1, on_frame: Callable[[int], None] | None = None,
                 extra: Callable[[int, np.ndarray], None] | None = None, busy: Callable[[float, int], None] | None = None) -> None:
        self.sink, self.on_frame, self.extra, self.busy = sink, on_frame, extra, busy
        self.written = 0
        self.stop = threading.Event()
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
        import time

        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            assert isinstance(item, FinishedBatch)
            try:
                if self._error is None and not self.stop.is_set():
                    start = time.perf_counter()
                    frames = item.host_frames()
                    for offset, frame in enumerate(frames):
                        self.sink.write(frame)
                        if self.extra is not None:
                            self.extra(item.first_index + offset, frame)
                        self.written += 1
                        if self.on_frame is not None:
                            self.on_frame(self.written)
                    if self.busy is not None:
                        self.busy(time.perf_counter() - start, len(frames))
            except BaseException as exc:  # handed to the producer
                self._error = exc
            finally:
                item.release()

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

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, FinishedBatch):
                item.release()
