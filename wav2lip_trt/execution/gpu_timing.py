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
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import torch


class EventClock:
    """Per-stage GPU seconds on one stream: an event before and after each span of launches."""

    def __init__(self, stream: "torch.cuda.Stream | None") -> None:
        self.stream = stream
        self._spans: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = defaultdict(list)

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
            self._spans[name].append((start, end))

    def seconds(self) -> dict[str, float]:
        """Stage -> GPU seconds; waits for the last recorded event of each stage."""
        totals = {}
        for name, spans in self._spans.items():
            spans[-1][1].synchronize()
            totals[name] = round(sum(start.elapsed_time(end) for start, end in spans) / 1000.0, 6)
        return totals


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
