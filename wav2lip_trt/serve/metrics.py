"""``GET /metrics``: the server's state in the Prometheus text format.

Counts that the job table or the pool already hold are read when scraped (a collector), so they
cannot drift from the truth; what only happens once (frames written, a job's seconds) is counted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JOB_SECONDS_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class ServeMetrics:
    """One registry per server (so two servers in one process, as in tests, keep their own)."""

    def __init__(self, counts: Callable[[], dict[str, int]], queued: Callable[[], int],
                 workers_ready: Callable[[], int], disk: Callable[[], tuple[int, int]] | None = None) -> None:
        self.registry = CollectorRegistry()
        self._counts, self._queued, self._ready = counts, queued, workers_ready
        self._disk = disk  # (bytes the jobs take under the state dir, the quota or 0)
        self._lock = threading.Lock()
        self._memory: dict[str, int] = {}
        self._last_fps = 0.0
        self._jobs, self._seconds = 0, 0.0
        self.frames = Counter("wav2lip_trt_frames", "Output frames written by finished and running jobs.",
                              registry=self.registry)
        self.job_seconds = Histogram("wav2lip_trt_job_seconds", "Wall time of a succeeded job in its worker.",
                                     buckets=JOB_SECONDS_BUCKETS, registry=self.registry)
        self.registry.register(_Live(self))

    def job_done(self, seconds: float, frames: int) -> None:
        self.job_seconds.observe(seconds)
        with self._lock:
            self._last_fps = frames / seconds if seconds > 0 else 0.0
            self._jobs += 1
            self._seconds += seconds

    def device_memory(self, worker: int, memory: int | None) -> None:
        if memory is not None:
            with self._lock:
                self._memory[str(worker)] = memory

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def mean_job_seconds(self) -> float | None:
        with self._lock:
            return self._seconds / self._jobs if self._jobs else None


class _Live:
    """Read at each scrape: jobs by status, queue length, workers ready, disk use, device memory, last job's rate."""

    def __init__(self, metrics: ServeMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        m = self.metrics
        jobs = GaugeMetricFamily("wav2lip_trt_jobs", "Jobs known to the server, by status.", labels=["status"])
        for status, count in m._counts().items():
            jobs.add_metric([status], count)
        yield jobs
        yield GaugeMetricFamily("wav2lip_trt_queue_length", "Jobs waiting for a worker.", value=m._queued())
        yield GaugeMetricFamily("wav2lip_trt_workers_ready", "Workers with their session loaded.", value=m._ready())
        if m._disk is not None:
            used, limit = m._disk()
            yield GaugeMetricFamily("wav2lip_trt_disk_used_bytes", "Bytes the jobs' uploads and outputs take under "
                                    "the state dir.", value=used)
            yield GaugeMetricFamily("wav2lip_trt_disk_quota_bytes", "The disk quota (--max-disk-gb); 0 = no limit.",
                                    value=limit)
        with m._lock:
            fps, memory = m._last_fps, dict(m._memory)
        yield GaugeMetricFamily("wav2lip_trt_frames_per_second",
                                "Frames per second of the last succeeded job (rate(wav2lip_trt_frames_total) for "
                                "the server's throughput).", value=fps)
        device = GaugeMetricFamily("wav2lip_trt_device_memory_bytes", "CUDA memory reserved by each worker.",
                                   labels=["worker"])
        for worker, used in sorted(memory.items()):
            device.add_metric([worker], used)
        yield device
