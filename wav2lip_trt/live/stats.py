"""What a live stream did: frames, drops, gaps, per-chunk latency and batch sizes, in flat memory."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..audio import SAMPLE_RATE

LATENCY_KEPT = 100_000
"""Chunk latencies kept for the percentiles: the latest ones (hours at 200 ms chunks), so memory stays flat."""
RECENT_KEPT = 1_000
"""Gaps and batch sizes kept as lists (the latest); their counts and sums run over the whole stream."""


@dataclass
class StreamStats:
    """What a stream did; memory stays flat however long it runs (running counts and sums, bounded lists)."""

    frames: int = 0  # handed to the consumer
    dropped_pending: int = 0  # dropped before generation (policy "drop")
    dropped_finished: int = 0  # generated, dropped because the consumer was behind (policy "drop")
    samples: int = 0  # audio samples fed (silence inserted by the wall clock included)
    gaps: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=RECENT_KEPT))
    """(audio time s, silence inserted s) of the latest gaps; one pause in the audio is one gap."""
    gap_count: int = 0
    gap_seconds: float = 0.0
    chunk_latency: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_KEPT))
    """Per fed chunk with frames: fed -> its last frame out, s (the latest :data:`LATENCY_KEPT`)."""
    latency_chunks: int = 0
    batches: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_KEPT))  # latest generator batch sizes
    batch_count: int = 0
    batch_frames: int = 0
    batch_max: int = 0
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    @property
    def dropped(self) -> int:
        return self.dropped_pending + self.dropped_finished

    def add_gap(self, at: int, samples: int, *, continues: bool) -> None:
        """``samples`` of silence inserted at sample ``at``: a new gap, or (``continues``) more of the last one."""
        seconds = samples / SAMPLE_RATE
        self.gap_seconds += seconds
        if continues and self.gaps:
            where, length = self.gaps[-1]
            self.gaps[-1] = (where, length + seconds)
            return
        self.gap_count += 1
        self.gaps.append((at / SAMPLE_RATE, seconds))

    def add_latency(self, seconds: float) -> None:
        self.latency_chunks += 1
        self.chunk_latency.append(seconds)

    def add_batch(self, frames: int) -> None:
        self.batch_count += 1
        self.batch_frames += frames
        self.batch_max = max(self.batch_max, frames)
        self.batches.append(frames)

    def report(self) -> dict:
        lat = np.asarray(self.chunk_latency, dtype=np.float64)
        wall = (self.finished or time.perf_counter()) - self.started
        audio_seconds = self.samples / SAMPLE_RATE

        def pct(q: float) -> float | None:
            return round(float(np.percentile(lat, q)) * 1000, 1) if lat.size else None

        return {
            "frames": self.frames, "dropped": self.dropped, "dropped_pending": self.dropped_pending,
            "dropped_finished": self.dropped_finished, "audio_seconds": round(audio_seconds, 3),
            "gaps": self.gap_count, "gap_seconds": round(self.gap_seconds, 3),
            "gap_list": [[round(at, 3), round(length, 3)] for at, length in list(self.gaps)[-100:]],
            "latency_ms": {"p50": pct(50), "p95": pct(95), "max": round(float(lat.max()) * 1000, 1) if lat.size else None,
                           "chunks": self.latency_chunks},
            "batches": {"count": self.batch_count,
                        "mean": round(self.batch_frames / self.batch_count, 2) if self.batch_count else None,
                        "max": self.batch_max or None},
            "seconds": round(wall, 3), "frames_per_second": round(self.frames / wall, 2) if wall > 0 else None,
            "real_time_factor": round(wall / audio_seconds, 3) if audio_seconds > 0 else None,
        }
