"""Per-stage timing and the thread hand-off between stages.

Stages run in worker threads joined by bounded queues (back-pressure: a slow encoder stalls the
decoder instead of letting frames pile up). :class:`StageTimes` adds up the busy time of each stage,
whichever thread it runs in, for ``--profile`` and ``bench``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from .execution.gpu_timing import EventClock

T = TypeVar("T")

STAGE_ORDER = ("audio", "load", "decode", "detect", "postprocess", "crop", "generate", "paste", "encode")
GPU_STAGES = ("detect", "postprocess", "crop", "generate", "paste", "score")
"""The stages that enqueue work on the compute stream (the pipeline thread's): timed by CUDA events too."""


class StageTimes:
    """Busy seconds and item counts per stage; thread-safe.

    With a ``clock`` on the compute stream, the :data:`GPU_STAGES` are also timed by CUDA events: host
    busy time is enqueue time, the GPU's own time is ``gpu_seconds`` (read after the run, in :meth:`rows`).
    """

    def __init__(self, clock: "EventClock | None" = None) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = defaultdict(float)
        self.items: dict[str, int] = defaultdict(int)

    def add(self, name: str, seconds: float, items: int = 0) -> None:
        with self._lock:
            self.seconds[name] += seconds
            self.items[name] += items

    @contextmanager
    def stage(self, name: str, items: int = 0) -> Iterator[None]:
        start = time.perf_counter()
        clock = self.clock if name in GPU_STAGES else None
        try:
            if clock is None:
                yield
            else:
                with clock.span(name):
                    yield
        finally:
            self.add(name, time.perf_counter() - start, items)

    def rows(self) -> list[dict[str, float | int | str]]:
        """Per stage: busy seconds, items, items per second; ``gpu_seconds`` where events timed it (this
        waits for the last event of each timed stage: call it after the run)."""
        gpu = self.clock.seconds() if self.clock is not None else {}
        names = [n for n in STAGE_ORDER if n in self.seconds] + sorted(set(self.seconds) - set(STAGE_ORDER))
        rows: list[dict[str, float | int | str]] = []
        for n in names:
            row: dict[str, float | int | str] = {
                "stage": n, "seconds": round(self.seconds[n], 4), "items": self.items[n],
                "items_per_second": round(self.items[n] / self.seconds[n], 2) if self.seconds[n] > 0 else None}
            if n in gpu:
                row["gpu_seconds"] = gpu[n]
            rows.append(row)
        return rows


_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(items: Iterable[T], depth: int, name: str = "stage") -> Iterator[T]:
    """Run ``items`` in a worker thread, at most ``depth`` results ahead of the consumer.

    Exceptions in the worker are re-raised in the consumer; closing the returned generator stops
    the worker at its next hand-off.
    """
    q: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(value: object) -> bool:
        while not stop.is_set():
            try:
                q.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_Failure(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=work, name=f"wav2lip-trt-{name}", daemon=True)
    worker.start()
    try:
        while True:
            value = q.get()
            if value is _DONE:
                return
            if isinstance(value, _Failure):
                raise value.exc
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def timed(items: Iterable[T], times: StageTimes, name: str) -> Iterator[T]:
    """Charge the time spent producing each item of ``items`` to stage ``name``."""
    it = iter(items)
    while True:
        start = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            times.add(name, time.perf_counter() - start)
            return
        times.add(name, time.perf_counter() - start, 1)
        yield item
