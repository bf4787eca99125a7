"""Timing primitives with no pipeline imports, so the pytest-benchmark suite in ``benchmarks/`` and
``bench --micro`` measure alike and quote the same median-and-range figures."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Spread:
    """A sample's median and range: what a noisy machine lets one honestly quote."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Spread":
        if not samples:
            raise ValueError("no samples")
        return cls(float(statistics.median(samples)), float(min(samples)), float(max(samples)), len(samples))

    @property
    def spread(self) -> float:
        """(max - min) / median."""
        return (self.max - self.min) / self.median if self.median else 0.0

    def scaled(self, factor: float) -> "Spread":
        return Spread(self.median * factor, self.min * factor, self.max * factor, self.n)

    def to_json(self, digits: int = 5) -> dict[str, float | int]:
        """Rounded to ``digits`` significant digits."""
        def r(x: float) -> float:
            return float(f"{x:.{digits}g}")

        return {"median": r(self.median), "min": r(self.min), "max": r(self.max), "n": self.n}


def time_callable(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1,
                  synchronize: Callable[[], None] | None = None) -> Spread:
    """Seconds per call of ``fn`` after ``warmup`` discarded calls; ``synchronize`` (e.g.
    ``torch.cuda.synchronize``) is called around each timed call so queued GPU work is counted."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if synchronize is not None:
            synchronize()
        start = time.perf_counter()
        fn()
        if synchronize is not None:
            synchronize()
        samples.append(time.perf_counter() - start)
    return Spread.of(samples)


@dataclass(frozen=True)
class Case:
    """One timed operation: ``setup()`` builds the inputs once and returns the call to time."""

    name: str
    items: int  # frames, faces or boxes per call (for items per second)
    unit: str  # what an item is
    setup: Callable[[], Callable[[], object]]


def time_cases(cases: Sequence[Case], *, repeats: int = 5, warmup: int = 1) -> dict[str, dict[str, Any]]:
    """Each case timed with :func:`time_callable`: milliseconds per call and items per second."""
    results = {}
    for case in cases:
        seconds = time_callable(case.setup(), repeats=repeats, warmup=warmup)
        results[case.name] = {"ms": seconds.scaled(1e3).to_json(), "items": case.items, "unit": case.unit,
                              "items_per_second": round(case.items / seconds.median, 2)}
    return results
