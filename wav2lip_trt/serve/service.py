"""The jobs of a server: admitted against the queue bound, stored, run on the pool, reported, recovered.

Everything here is transport-free (no HTTP): :mod:`.app` calls these methods and turns
:class:`~.uploads.UploadError` and :class:`JobNotFound` into status codes.

Exactly once. Each job's output is written by the pipeline to a temporary file renamed when
complete, and the batch's mark (:func:`wav2lip_trt.jobs.results.mark_started`) is written before
it runs. On a restart a job left ``running`` or ``queued`` is run again unless its output is already
complete (:func:`wav2lip_trt.jobs.results.is_done`: the server died between the rename and
recording it), so no output is written twice and none is lost.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Wav2LipTrtError
from ..jobs.local import cpu_cores, default_workers, gpu_count
from ..jobs.results import is_done, mark_path, mark_started
from ..jobs.spec import _coerce, per_call_options
from ..progress import LIP_SYNC_PHASE
from .avatars import AvatarService, routed
from .config import ServeConfig
from .events import EventHub
from .metrics import ServeMetrics
from .pool import ServePool
from .quota import DiskQuota
from .store import FINISHED, JobRow, JobStore
from .tasks import StreamTask, Task
from .timeouts import JobWatch
from .uploads import RESULT_NAME, Incoming, UploadError, inference_options, parse_options, probe, remove, \
    resolve_allowed, store, upload_bytes

log = logging.getLogger(__name__)

PAGE_LIMIT = 100


class JobNotFound(LookupError):
    pass


class QueueFull(Exception):
    """429: the server's queue, or this client's share of it, is full."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Live:
    """A running job's progress, in memory only (it changes many times a second)."""

    phase: str | None = None
    total: int | None = None
    done: int = 0
    since: float | None = None  # monotonic time of the first frame report, for the ETA

    def view(self) -> dict[str, Any]:
        fraction = self.done / self.total if self.total else None
        eta = None
        if self.total and self.since is not None and self.done:
            elapsed = time.monotonic() - self.since
            eta = round(elapsed / self.done * (self.total - self.done), 2)
        return {"phase": self.phase, "frames_done": self.done, "frames_total": self.total,
                "fraction": None if fraction is None else round(fraction, 4), "eta_seconds": eta}


class JobService:
    """The server's jobs; its pool callbacks (``job_*``, ``worker_ready``, ``pool_failed``) run on the pool's thread."""

    def __init__(self, config: ServeConfig, log_level: int = logging.WARNING,
                 pool: Callable[[JobService], Any] | None = None) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir).absolute()
        self.jobs_dir = self.state_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.state_dir / "jobs.sqlite3")
        self.quota = DiskQuota(self.jobs_dir, config.max_disk_bytes, grace_seconds=config.quota_grace_minutes * 60,
                               finished_before=self.store.finished_before, delete=self._delete)
        self.hub = EventHub()
        self.live: dict[str, _Live] = {}
        self.failure: str | None = None  # the pool cannot run jobs (a session that does not load)
        self.stopping = False
        self._admit = threading.Lock()
        self._admitting: dict[str | None, int] = {}  # requests being admitted, by client
        self._stopped = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="wav2lip-trt-serve-expiry", daemon=True)
        workers = config.workers or default_workers(config.device)
        spec = config.worker_spec(threads=max(1, cpu_cores() // workers))
        gpus = gpu_count(config.device) if config.device != "cpu" else 0
        self.workers = workers
        # pool: another pool with ServePool's interface, made with this service as its listener (serve --ray)
        self.pool = pool(self) if pool is not None else \
            ServePool(spec, workers, self, gpus=range(gpus), log_level=log_level)
        self.avatars = AvatarService(self)  # avatars and avatar jobs (live sessions: the pool's open_live)
        self.metrics = ServeMetrics(self.store.counts, self.pool.queued, lambda: self.pool.ready,
                                    lambda: (self.quota.used, self.quota.limit))
        self.watch = JobWatch(config.job_timeout, self.quota, self._stop_job)

    # ---- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Re-queue what a previous run left unfinished, then start the workers."""
        self.quota.scan()
        for row in self.store.with_status("running", "queued"):
            self._recover(row)
        self.avatars.recover()
        self.expire()
        self.pool.start()
        self.watch.start()
        if self.config.keep_hours > 0:
            self._sweeper.start()

    def shutdown(self) -> None:
        """Drain: nothing new starts, running jobs get ``drain_seconds``; what is cut short stays queued."""
        self.stopping = True
        self._stopped.set()
        if self._sweeper.is_alive():
            self._sweeper.join()
        self.watch.stop()
        for job_id in self.pool.stop(self.config.drain_seconds):
            if self.avatars.handles(job_id):
                self.avatars.store.update(job_id, status="queued")
            else:
                self.store.update(job_id, status="queued", phase=None)
        self.store.close()

    def expire(self) -> int:
        """Delete the finished jobs older than ``--keep-hours`` (row, uploads, result); how many went."""
        if self.config.keep_hours <= 0:
            return 0
        gone = self.store.finished_before(time.time() - self.config.keep_hours * 3600)
        for job_id in gone:
            self._delete(job_id)
        if gone:
            log.info("deleted %d finished job(s) older than %g h (--keep-hours)", len(gone), self.config.keep_hours)
        return len(gone)

    def _sweep(self) -> None:
        interval = min(60.0, max(0.5, self.config.keep_hours * 3600 / 4))
        while not self._stopped.wait(interval):
            try:
                self.expire()
            except Exception:  # a bug here must not end the sweeps, nor the server
                log.exception("deleting expired jobs failed")

    def _recover(self, row: JobRow) -> None:
        try:
            options = self._options(row)
        except Wav2LipTrtError as exc:
            self._finish(row.id, "failed", error=str(exc))
            return
        if is_done(options) if not isinstance(options, StreamTask) else Path(row.outfile).is_file():
            self._finish(row.id, "succeeded", report={"outfile": RESULT_NAME, "recovered": True})
            return
        self.store.update(row.id, status="queued", phase=None)
        self.pool.submit(row.id, options)

    def _options(self, row: JobRow) -> Any:
        if "avatar" in row.options:
            return self.avatars.stream_task(row)
        allowed = per_call_options()
        typed = {name: _coerce(allowed[name], value, False) for name, value in row.options.items()}
        return inference_options(self.config, Path(row.face), Path(row.audio), Path(row.outfile), typed)

    # ---- requests ---------------------------------------------------------------------------------

    def submit(self, face: Incoming, audio: Incoming, options_text: str | None,
               client: str | None = None, avatar: str | None = None) -> dict[str, Any]:
        """A new job from a request (blocking: files are copied and probed); its public view.

        ``avatar``: an avatar's id instead of a face: the job streams that avatar with the audio."""
        with self.admitted(client):
            with self.quota.reserve(upload_bytes(face) + upload_bytes(audio)):
                return self._submit(face, audio, options_text, client, avatar)

    def submit_avatar(self, face: Incoming, options_text: str | None, client: str | None = None) -> dict[str, Any]:
        """A new avatar to prepare (:mod:`.avatars`), admitted as a job is (queue bound, client share)."""
        with self.admitted(client):
            with self.quota.reserve(upload_bytes(face)):
                return self.avatars.submit(face, options_text, client)

    @contextmanager
    def admitted(self, client: str | None) -> Iterator[None]:
        """Room for one more queued task of ``client``, or :class:`QueueFull`; held while it is admitted."""
        if self.failure is not None:
            raise UploadError(f"the server cannot run jobs: {self.failure}", 503)
        limit = self.config.max_jobs_per_client
        with self._admit:
            queued = self.pool.queued() + sum(self._admitting.values())
            if queued >= self.config.queue_size + max(0, self.workers - self.pool.running()):
                wait = self.retry_after(queued)
                raise QueueFull(f"the queue is full ({queued} jobs waiting); try again in {wait} s", wait)
            if limit and client is not None:
                mine = self.store.active(client) + self.avatars.store.active(client) + self._admitting.get(client, 0)
                if mine >= limit:
                    wait = self.retry_after(mine)
                    raise QueueFull(f"you have {mine} jobs queued or running, the most this server takes from one "
                                    f"client (--max-jobs-per-client {limit}); try again in {wait} s", wait)
            self._admitting[client] = self._admitting.get(client, 0) + 1
        try:
            yield
        finally:
            with self._admit:
                self._admitting[client] -= 1

    def enqueue(self, job_id: str, task: Task) -> None:
        """A job stored and checked goes to the pool (its progress starts as queued)."""
        self.live[job_id] = _Live(phase="queued")
        self.pool.submit(job_id, task)

    def _submit(self, face: Incoming, audio: Incoming, options_text: str | None, client: str | None,
                avatar: str | None = None) -> dict[str, Any]:
        if avatar is not None:
            if face.stream is not None or face.path:
                raise UploadError("give either face (or face_path) or avatar, not both")
            return self.avatars.submit_job(avatar, audio, options_text, client)
        given, typed = parse_options(options_text)
        job_id = secrets.token_hex(8)
        folder = self.jobs_dir / job_id
        folder.mkdir()
        try:
            paths, names = {}, {}
            for incoming in (face, audio):
                if incoming.stream is not None:
                    paths[incoming.field] = store(incoming, folder, self.config.max_upload_bytes)
                elif incoming.path:
                    paths[incoming.field] = resolve_allowed(f"{incoming.field}_path", incoming.path,
                                                            self.config.allowed_roots)
                else:
                    raise UploadError(f"missing {incoming.field}: upload it in field {incoming.field} (or give "
                                      f"{incoming.field}_path under --allow-path)")
                names[incoming.field] = incoming.name
            outfile = folder / RESULT_NAME
            options = inference_options(self.config, paths["face"], paths["audio"], outfile, typed)
            probe(options, {paths["face"]: names["face"], paths["audio"]: names["audio"], outfile: RESULT_NAME})
            self.store.add(job_id, str(paths["face"]), str(paths["audio"]), str(outfile), given, names, client)
            mark_started(options, 0)
            self.quota.account(job_id)
        except BaseException:
            remove(folder)
            self.quota.forget(job_id)
            raise
        self.live[job_id] = _Live(phase="queued")
        self.pool.submit(job_id, options)
        return self.view(job_id)

    def retry_after(self, queued: int) -> int:
        """Seconds until a place in the queue is likely free (the mean job's time per worker, at least 1)."""
        mean = self.metrics.mean_job_seconds() or 5.0
        return max(1, math.ceil(mean * max(1, queued) / max(1, self.workers) / 2))

    def view(self, job_id: str) -> dict[str, Any]:
        row = self.store.get(job_id)
        if row is None:
            raise JobNotFound(job_id)
        return self._view(row)

    def _view(self, row: JobRow) -> dict[str, Any]:
        live = self.live.get(row.id)
        progress = live.view() if live is not None and row.status in ("queued", "running") else {
            "phase": row.phase, "frames_done": (row.report or {}).get("frames", 0), "frames_total":
            (row.report or {}).get("frames"), "fraction": 1.0 if row.status == "succeeded" else None,
            "eta_seconds": None}
        return {"id": row.id, "status": row.status, "created": row.created, "started": row.started,
                "finished": row.finished, "attempts": row.attempts, "files": row.names, "options": row.options,
                "progress": progress, "report": row.report, "error": row.error,
                "result": f"/v1/jobs/{row.id}/result" if row.status == "succeeded" else None}

    def page(self, limit: int, before: float | None, status: str | None) -> dict[str, Any]:
        limit = max(1, min(limit, PAGE_LIMIT))
        jobs = [self._view(row) for row in self.store.page(limit, before, status)]
        following = jobs[-1]["created"] if len(jobs) == limit else None
        return {"jobs": jobs, "next_before": following}

    def result(self, job_id: str) -> Path:
        row = self.store.get(job_id)
        if row is None:
            raise JobNotFound(job_id)
        if row.status != "succeeded":
            raise UploadError(f"job {job_id} is {row.status}: no result" + (f" ({row.error})" if row.error else ""),
                              409)
        path = Path(row.outfile)
        if not path.is_file():
            raise UploadError(f"job {job_id}: its result is gone from the server", 410)
        return path

    def cancel_or_delete(self, job_id: str) -> dict[str, Any]:
        """A queued or running job is cancelled (its files removed); a finished one is deleted with its files."""
        row = self.store.get(job_id)
        if row is None:
            raise JobNotFound(job_id)
        if row.status in FINISHED:
            self._delete(job_id)
            return {"id": job_id, "status": "deleted"}
        where = self.pool.cancel(job_id)
        if where != "running":  # queued (or between the pool and here): it never runs
            self.job_cancelled(job_id)
        return self.view(job_id)

    def _delete(self, job_id: str) -> None:
        """A finished job goes: its files, its row, its share of the quota (a client, --keep-hours, or the quota)."""
        remove(self.jobs_dir / job_id)
        self.store.delete(job_id)
        self.quota.forget(job_id)
        self.hub.publish(job_id, "end", {"id": job_id, "status": "deleted"})

    def _stop_job(self, job_id: str) -> None:
        """The job watch's cancel (--job-timeout, the disk quota): :meth:`job_cancelled` marks it failed."""
        if self.pool.cancel(job_id) == "queued":
            self.job_cancelled(job_id)

    # ---- pool callbacks (the pool's thread) ------------------------------------------------------------

    def worker_ready(self, ready: int, memory: int | None, worker: int) -> None:
        self.metrics.device_memory(worker, memory)
        log.info("%d of %d workers ready", ready, self.workers)

    @routed
    def job_started(self, job_id: str, attempt: int) -> None:
        self.live[job_id] = _Live(phase="starting")
        self.watch.started(job_id)
        self.store.update(job_id, status="running", started=time.time(), attempts=attempt, phase="starting")
        self.hub.publish(job_id, "status", {"status": "running", "attempt": attempt})

    @routed
    def job_phase(self, job_id: str, label: str) -> None:
        live = self.live.setdefault(job_id, _Live())
        live.phase = label
        self.store.update(job_id, phase=label)
        self.hub.publish(job_id, "progress", live.view())

    @routed
    def job_total(self, job_id: str, frames: int) -> None:
        live = self.live.setdefault(job_id, _Live())
        live.total, live.done, live.since = frames, 0, time.monotonic()
        self.hub.publish(job_id, "progress", live.view())

    @routed
    def job_frame(self, job_id: str, done: int) -> None:
        live = self.live.setdefault(job_id, _Live())
        if live.phase == LIP_SYNC_PHASE:  # detection's counts are input frames, not frames written
            self.metrics.frames.inc(max(0, done - live.done))
        live.done = done
        self.hub.publish(job_id, "progress", live.view())

    @routed
    def job_done(self, job_id: str, report: dict[str, Any], memory: int | None, worker: int) -> None:
        self.metrics.device_memory(worker, memory)
        self.metrics.job_done(report["seconds"], report["frames"])
        report = {**report, "outfile": RESULT_NAME}  # the server's own paths are not the client's business
        self._finish(job_id, "succeeded", report=report)

    @routed
    def job_failed(self, job_id: str, error: str) -> None:
        row = self.store.get(job_id)
        if row is not None:
            for stored, name in ((row.face, row.names.get("face")), (row.audio, row.names.get("audio")),
                                 (row.outfile, RESULT_NAME)):
                if name:
                    error = error.replace(stored, name)
        self._finish(job_id, "failed", error=error)
        if row is not None:
            Path(row.outfile).unlink(missing_ok=True)

    @routed
    def job_cancelled(self, job_id: str) -> None:
        row = self.store.get(job_id)
        if row is None or row.status in FINISHED:
            return
        if (reason := self.watch.reason(job_id)) is not None:
            self.job_failed(job_id, reason)
            return
        folder = self.jobs_dir / job_id
        if Path(row.outfile).parent == folder:
            remove(folder)  # uploads, the temporary output, the mark: nothing of the job is left
        else:
            mark_path(Path(row.outfile)).unlink(missing_ok=True)
        self._finish(job_id, "cancelled", error="cancelled by a client")

    @routed
    def job_retried(self, job_id: str, why: str) -> None:
        self.store.update(job_id, status="queued", phase=f"retrying: its worker died ({why})")
        self.hub.publish(job_id, "status", {"status": "queued", "attempt": 2})

    def pool_failed(self, error: str) -> None:
        log.error("Error: %s", error)
        self.failure = error

    def _finish(self, job_id: str, status: str, *, report: dict[str, Any] | None = None,
                error: str | None = None) -> None:
        self.store.update(job_id, status=status, finished=time.time(), report=report, error=error,
                          phase="finished" if status == "succeeded" else status)
        self.live.pop(job_id, None)
        self.watch.ended(job_id)
        self.quota.account(job_id)
        row = self.store.get(job_id)
        self.hub.publish(job_id, "end", self._view(row) if row is not None else {"id": job_id, "status": status})
