"""GPU time, measured on the GPU: CUDA events around a stage's launches on the compute stream, the
steady-state frame rate, and the memory a run held.

Host timers around asynchronous launches measure enqueue time; the GPU's own time then lands at the next
wait (the per-batch event, the host copy). An event pair on the compute stream measures what the stream
spent between the two points. The steady rate counts frames from the first finished batch to the last, so
model load, cuDNN autotuning, Triton JIT and graph capture are reported apart, not averaged in.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch


class Mark(Protocol):
    """A point in a stream's work, complete some time after it is recorded: :class:`torch.cuda.Event`'s API."""

    def query(self) -> bool: ...

    def synchronize(self) -> None: ...

    def elapsed_time(self, end: Any) -> float: ...


class SpanTotals:
    """Per-name sums of spans between two marks, folded as the marks complete: memory stays flat however
    long the run (a live stream runs for hours), and at most ``outstanding`` spans wait to be folded.

    :meth:`add` folds every span at the front whose end mark has completed (``query``, no wait); past
    ``outstanding`` it waits for the oldest (``synchronize``). The spans of one stream complete in the
    order they were recorded, and each name's milliseconds are added up in that order, so the totals
    are the same numbers as a sum over all spans kept to the end. ``outstanding`` is far more spans than
    the pipeline's bounded queues let the host run ahead of the GPU, so the wait does not happen in a run.
    """

    def __init__(self, outstanding: int = 256) -> None:
        if outstanding < 1:
            raise ValueError(f"outstanding must be at least 1, got {outstanding}")
        self.outstanding = outstanding
        self._pending: deque[tuple[str, Mark, Mark]] = deque()
        self._ms: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Spans recorded but not folded yet."""
        return len(self._pending)

    def add(self, name: str, start: Mark, end: Mark) -> None:
        with self._lock:
            self._ms.setdefault(name, 0)
            self._pending.append((name, start, end))
            self._fold(wait_all=False)

    def milliseconds(self) -> dict[str, float]:
        """Name -> summed milliseconds of all spans added; waits for the ones not complete yet."""
        with self._lock:
            self._fold(wait_all=True)
            return dict(self._ms)

    def _fold(self, *, wait_all: bool) -> None:
        while self._pending:
            name, start, end = self._pending[0]
            if wait_all or len(self._pending) > self.outstanding:
                end.synchronize()
            elif not end.query():
                return
            self._ms[name] += start.elapsed_time(end)
            self._pending.popleft()


class EventClock:
    """Per-stage GPU seconds on one stream: an event before and after each span of launches (folded as
    they complete, :class:`SpanTotals`)."""

    def __init__(self, stream: "torch.cuda.Stream | None", *, outstanding: int = 256) -> None:
        self.stream = stream
        self.totals = SpanTotals(outstanding)

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        """Time the work enqueued on the stream inside the block (nothing on the CPU)."""
        if self.stream is None:
            yield
            return
        start = torch.cuda.Event(enable_timing=True)
        start.record(self.stream)
        try:
            yield
        finally:
            end = torch.cuda.Event(enable_timing=True)
            end.record(self.stream)
            self.totals.add(name, start, end)

    def seconds(self) -> dict[str, float]:
        """Stage -> GPU seconds; waits for the events not complete yet."""
        return {name: round(ms / 1000.0, 6) for name, ms in self.totals.milliseconds().items()}


class SteadyRate:
    """When each finished batch was written; the rate from the first batch's end to the last's leaves the
    start-up out (it needs two batches: one batch has no steady state)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.started = clock()
        self.batches: list[tuple[float, int]] = []

    def batch(self, frames: int) -> None:
        self.batches.append((self.clock(), frames))

    def report(self) -> dict[str, float | int | None]:
        """Frames, batches, seconds to the first finished batch (load, JIT, capture, first batch), steady fps."""
        frames = sum(n for _, n in self.batches)
        steady = None
        if len(self.batches) > 1 and self.batches[-1][0] > self.batches[0][0]:
            steady = round((frames - self.batches[0][1]) / (self.batches[-1][0] - self.batches[0][0]), 3)
        first = round(self.batches[0][0] - self.started, 4) if self.batches else None
        return {"frames": frames, "batches": len(self.batches), "first_batch_s": first, "steady_fps": steady}


def memory_report(device: "torch.device | None" = None) -> dict[str, int | None]:
    """Peak device memory reserved and allocated, pinned host bytes held by torch, the process's peak RSS.

    ``pinned_slab_bytes``: the most host memory the run's own pinned slabs held at once (decode and
    readback rings, :func:`~wav2lip_trt.execution.handoff.pinned_bytes`), which torch's stats do not see.
    """
    from .handoff import pinned_bytes

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux
    out: dict[str, int | None] = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
                                  "max_memory_reserved": None, "max_memory_allocated": None, "pinned_host_bytes": None,
                                  "pinned_slab_bytes": pinned_bytes()["slabs_peak"]}
    if torch.cuda.is_available():
        out["max_memory_reserved"] = int(torch.cuda.max_memory_reserved(device))
        out["max_memory_allocated"] = int(torch.cuda.max_memory_allocated(device))
        stats = getattr(torch.cuda, "host_memory_stats", None)
        if stats is not None:
            try:
                out["pinned_host_bytes"] = int(stats().get("reserved_bytes.current", 0))
            except RuntimeError:
                pass
    return out
