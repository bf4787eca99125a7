from __future__ import annotations

import threading
import time

import pytest

from wav2lip_trt.stages import StageTimes, prefetch, timed


def test_prefetch_keeps_order_and_bounds_lookahead() -> None:
    produced = []

    def source():
        for i in range(20):
            produced.append(i)
            yield i

    it = prefetch(source(), depth=3)
    assert next(it) == 0
    time.sleep(0.2)
    assert len(produced) <= 1 + 3 + 1  # consumed + queued + one blocked in put
    assert list(it) == list(range(1, 20))


def test_prefetch_reraises_worker_errors() -> None:
    def source():
        yield 1
        raise ValueError("decoder broke")

    it = prefetch(source(), depth=2)
    assert next(it) == 1
    with pytest.raises(ValueError, match="decoder broke"):
        next(it)


def test_closing_stops_the_worker() -> None:
    closed = threading.Event()

    def source():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    it = prefetch(source(), depth=2)
    assert next(it) == 0
    it.close()
    assert closed.wait(2)
    assert not any(t.name.startswith("wav2lip-trt-") for t in threading.enumerate())


def test_stage_times_count_items_and_time() -> None:
    times = StageTimes()
    assert list(timed(iter([1, 2, 3]), times, "decode")) == [1, 2, 3]
    with times.stage("generate", 4):
        time.sleep(0.05)
    rows = {r["stage"]: r for r in times.rows()}
    assert [r["stage"] for r in times.rows()] == ["decode", "generate"]
    assert rows["decode"]["items"] == 3 and rows["generate"]["items"] == 4
    assert rows["generate"]["seconds"] >= 0.05
    assert rows["generate"]["items_per_second"] == pytest.approx(4 / rows["generate"]["seconds"], rel=0.01)


def test_stage_times_without_a_gpu_clock_report_host_time_only() -> None:
    """An EventClock with no stream (the CPU) times nothing: the rows are those of a clockless StageTimes."""
    from wav2lip_trt.execution.gpu_timing import EventClock

    plain, clocked = StageTimes(), StageTimes(EventClock(None))
    for times in (plain, clocked):
        times.add("generate", 0.5, 8)
        with times.stage("paste", items=8):
            pass
        times.add("paste", 0.25 - times.seconds["paste"])  # equal busy time in both, whatever the block took
        times.add("encode", 0.1, 8)
    assert clocked.rows() == plain.rows()
    assert all("gpu_seconds" not in row for row in clocked.rows())
