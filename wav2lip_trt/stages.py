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
from typing import TypeVar

T = TypeVar("T")

STAGE_ORDER = ("audio", "load", "decode", "detect", "postprocess", "crop", "generate", "paste", "encode")


class StageTimes:
    """Busy seconds and item counts per stage; thread-safe."""

    def __init__(self) -> None:
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
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start, items)

    def rows(self) -> list[dict[str, float | int | str]]:
        names = [n for n in STAGE_ORDER if n in self.seconds] + sorted(set(self.seconds) - set(STAGE_ORDER))
        return [
            {"stage": n, "seconds": round(self.seconds[n], 4), "items": self.items[n],
             "items_per_second": round(self.items[n] / self.seconds[n], 2) if self.seconds[n] > 0 else None}
            for n in names
        ]


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
