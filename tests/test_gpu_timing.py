"""GPU stage timing folds its event pairs as they complete: flat memory, the same totals.

The folding (:class:`SpanTotals`) is tested on the host with marks that complete asynchronously as
CUDA events do: a worker thread runs the work queued on it in order (a host "stream") and stamps
each mark with the real time when it gets there.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import pytest

from wav2lip_trt.execution.gpu_timing import EventClock, SpanTotals


class HostStream:
    """Work queued from one thread, run in order by another: completes later than it is enqueued."""

    def __init__(self) -> None:
        self._work: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def enqueue(self, work: Callable[[], None]) -> None:
        self._work.put(work)

    def _run(self) -> None:
        while (work := self._work.get()) is not None:
            work()

    def close(self) -> None:
        self._work.put(None)
        self._thread.join()


class HostMark:
    """Stamped with ``time.perf_counter()`` when the stream reaches it (``torch.cuda.Event``'s API)."""

    def __init__(self, stream: HostStream) -> None:
        self.stamp: float | None = None
        self._done = threading.Event()
        stream.enqueue(self._reach)

    def _reach(self) -> None:
        self.stamp = time.perf_counter()
        self._done.set()

    def query(self) -> bool:
        return self._done.is_set()

    def synchronize(self) -> None:
        self._done.wait()

    def elapsed_time(self, end: "HostMark") -> float:
        assert self.stamp is not None and end.stamp is not None, "both marks must be complete"
        return (end.stamp - self.stamp) * 1000.0


def test_spans_are_folded_as_they_complete_with_the_same_totals() -> None:
    stream = HostStream()
    totals = SpanTotals(outstanding=4)
    spans: list[tuple[str, HostMark, HostMark]] = []
    most = 0
    try:
        for k in range(40):
            name = ("crop", "generate", "paste")[k % 3]
            start = HostMark(stream)
            stream.enqueue(lambda: time.sleep(0.002))  # the "kernels" of the span
            end = HostMark(stream)
            totals.add(name, start, end)
            spans.append((name, start, end))
            most = max(most, totals.pending)
        ms = totals.milliseconds()
    finally:
        stream.close()
    assert most <= 4 and totals.pending == 0  # never more than `outstanding` pairs held
    expected: dict[str, float] = {}
    for name, start, end in spans:  # what summing every pair at the end gives, in the same order
        expected[name] = expected.get(name, 0) + start.elapsed_time(end)
    assert ms == expected  # the same floats, not approximately
    assert list(ms) == ["crop", "generate", "paste"] and ms["crop"] >= 14 * 2.0 * 0.9


def test_completed_spans_are_folded_without_waiting() -> None:
    stream = HostStream()
    totals = SpanTotals(outstanding=1000)
    try:
        first = HostMark(stream), HostMark(stream)
        first[1].synchronize()  # the stream has passed both marks
        gate = threading.Event()
        stream.enqueue(gate.wait)  # the stream is busy from here on
        late = HostMark(stream), HostMark(stream)
        totals.add("generate", *first)
        totals.add("generate", *late)
        assert totals.pending == 1  # the complete pair was folded at once; the other waits, nothing blocked
        gate.set()
        assert totals.milliseconds()["generate"] >= 0 and totals.pending == 0
    finally:
        stream.close()


def test_outstanding_must_be_positive_and_the_cpu_clock_times_nothing() -> None:
    with pytest.raises(ValueError):
        SpanTotals(outstanding=0)
    clock = EventClock(None)
    with clock.span("generate"):
        pass
    assert clock.seconds() == {} and clock.totals.pending == 0
