"""The server's workers: long-lived processes, each holding one session, fed from one queue.

Like the batch's :class:`~wav2lip_trt.jobs.local.LocalPool` (spawned processes, one session each,
one per GPU, dying with the server; a worker that dies is replaced and its job run once more on
another), but open-ended: jobs arrive while it runs, can be cancelled, and report progress. One
dispatcher thread owns the processes; other threads only queue, cancel and read counts.

Tasks (:mod:`.tasks`): a lip-sync job, an avatar to prepare or an avatar job go through
:meth:`ServePool.submit` and the queue alike. A live session does not queue: :meth:`ServePool.open_live`
takes a free worker now (or raises :class:`~.channel.LiveBusy`) and hands its pipe to a
:class:`~.channel.LiveChannel` until the session ends; the dispatcher leaves that pipe alone meanwhile.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol

from ..jobs.local import _EOF, STOP_SECONDS, _poll
from ..jobs.worker import WorkerSpec
from .channel import LiveBusy, LiveChannel
from .tasks import LIVE_DEFAULTS, LiveTask, Task, partial_paths, task_kind
from .worker import CANCEL_SIGNAL, worker_main

__all__ = ["LiveBusy", "LiveChannel", "PoolListener", "PoolTask", "ServePool"]

log = logging.getLogger(__name__)


class PoolListener(Protocol):
    """What the pool reports, from its dispatcher thread."""

    def worker_ready(self, ready: int, memory: int | None, worker: int) -> None: ...
    def job_started(self, job_id: str, attempt: int) -> None: ...
    def job_phase(self, job_id: str, label: str) -> None: ...
    def job_total(self, job_id: str, frames: int) -> None: ...
    def job_frame(self, job_id: str, done: int) -> None: ...
    def job_done(self, job_id: str, report: dict[str, Any], memory: int | None, worker: int) -> None: ...
    def job_failed(self, job_id: str, error: str) -> None: ...
    def job_cancelled(self, job_id: str) -> None: ...
    def job_retried(self, job_id: str, why: str) -> None: ...
    def pool_failed(self, error: str) -> None: ...


@dataclass
class PoolTask:
    job_id: str
    options: Task  # InferenceOptions for a lip-sync job, else a :mod:`.tasks` task
    attempt: int = 1

    @property
    def kind(self) -> str:
        return task_kind(self.options)


@dataclass
class _Slot:
    index: int
    process: Any
    conn: Connection
    gpu: int | None
    task: PoolTask | None = None
    ready: bool = False
    live: LiveChannel | None = None  # a live session holds the worker and its pipe
    read_lock: threading.Lock = field(default_factory=threading.Lock)  # the dispatcher reads the pipe under it


@dataclass
class _Counts:
    ready: int = 0
    load_deaths: int = 0
    cancelling: set[str] = field(default_factory=set)
    interrupted: list[str] = field(default_factory=list)  # jobs whose worker died while the pool drained
    failed: str | None = None  # the session cannot load: no worker is started again


class ServePool:
    """``workers`` processes; :meth:`submit` and :meth:`cancel` from any thread, :meth:`stop` once."""

    def __init__(self, spec: WorkerSpec, workers: int, listener: PoolListener, *, gpus: Sequence[int] = (),
                 log_level: int = logging.WARNING) -> None:
        self.spec, self.workers, self.listener, self.gpus = spec, workers, listener, list(gpus)
        self.log_level = log_level
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._pending: deque[PoolTask] = deque()
        self._slots: list[_Slot] = []
        self._counts = _Counts()
        self._started = 0
        self._draining = False
        self._closing = False
        self._idle = threading.Event()
        self._wake_r, self._wake_w = self._context.Pipe(duplex=False)
        self._thread = threading.Thread(target=self._dispatch, name="wav2lip-trt-serve-pool", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def ready(self) -> int:
        return self._counts.ready

    def queued(self) -> int:
        with self._lock:
            return len(self._pending)

    def running(self) -> int:
        with self._lock:
            return sum(slot.task is not None for slot in self._slots)

    def submit(self, job_id: str, options: Task) -> None:
        """Queue a job, an avatar to prepare or an avatar job (the kind is the task's type, :func:`.tasks.task_kind`)."""
        with self._lock:
            self._pending.append(PoolTask(job_id, options))
        self._wake()

    def open_live(self, avatar_dir: Path, settings: dict[str, Any]) -> LiveChannel:
        """A live session of the avatar folder on a free worker, now; :class:`LiveBusy` when none is free.

        ``settings``: :data:`.tasks.LIVE_DEFAULTS`'s names (rate, clock, policy, ...)."""
        task = LiveTask(Path(avatar_dir), {**LIVE_DEFAULTS, **settings})
        live_id = secrets.token_hex(8)
        with self._lock:
            if self._draining or self._closing or self._counts.failed is not None:
                raise LiveBusy("the server is not taking live sessions now (it is stopping, or its workers failed)")
            slot = next((s for s in self._slots if s.ready and s.task is None and s.live is None), None)
            if slot is None:
                raise LiveBusy(f"no free worker for a live session (all {self.workers} are busy); try again later")
            slot.task = PoolTask(live_id, task)
        channel = LiveChannel(live_id, slot.conn, slot.process, int(task.settings["rate"]),
                              lambda ended: self._live_ended(slot, ended))
        with slot.read_lock:
            slot.live = channel
        channel.start(task)
        return channel

    def live_sessions(self) -> int:
        with self._lock:
            return sum(slot.live is not None for slot in self._slots)

    def _live_ended(self, slot: _Slot, channel: LiveChannel) -> None:
        with self._lock:
            if slot.live is channel:
                slot.live, slot.task = None, None
        self._wake()

    def cancel(self, job_id: str) -> str | None:
        """``"queued"`` (removed, never ran), ``"running"`` (its worker was told; job_cancelled follows) or None."""
        with self._lock:
            for task in self._pending:
                if task.job_id == job_id:
                    self._pending.remove(task)
                    return "queued"
            for slot in self._slots:
                if slot.task is not None and slot.task.job_id == job_id:
                    self._counts.cancelling.add(job_id)
                    try:
                        os.kill(slot.process.pid, CANCEL_SIGNAL)
                    except ProcessLookupError:
                        pass  # it just died: the dispatcher buries it and sees the cancel
                    return "running"
        return None

    def stop(self, drain_seconds: float) -> list[str]:
        """Run nothing new; end live sessions; give running jobs ``drain_seconds``; stop the workers.
        Returns the jobs cut short."""
        with self._lock:
            self._draining = True
            live = [slot.live for slot in self._slots if slot.live is not None]
        for channel in live:
            channel.abort()
        with self._lock:
            busy = any(slot.task is not None for slot in self._slots)
        self._wake()
        if busy:
            self._idle.wait(drain_seconds)
        self._closing = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join()
        return self._counts.interrupted

    def _stop_workers(self) -> None:
        """In the dispatcher thread, which started every worker: ``PR_SET_PDEATHSIG`` fires when the
        *thread* that started a process ends, so this thread outlives its workers."""
        for slot in list(self._slots):  # a job that ended during the drain is recorded, not re-run
            if slot.live is not None:
                continue
            message = _poll(slot.conn)
            while message is not None and message is not _EOF:
                self._handle(slot, message)
                message = _poll(slot.conn)
        self._counts.interrupted += [slot.task.job_id for slot in self._slots
                                     if slot.task is not None and slot.task.kind != "live"]
        for slot in self._slots:
            try:
                if slot.task is None and slot.process.is_alive():
                    slot.conn.send(None)
                else:
                    slot.process.terminate()  # SIGTERM: the job unwinds and removes its temporary output
            except (OSError, ValueError):
                slot.process.terminate()
        for slot in self._slots:
            slot.process.join(STOP_SECONDS)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
            if slot.task is not None:
                _remove_partial(slot.task)
            if slot.live is not None:
                slot.live.worker_died("the server stopped")
            else:
                slot.conn.close()
        self._slots.clear()
        with self._lock:
            self._counts.interrupted += [task.job_id for task in self._pending]
            self._pending.clear()

    def _wake(self) -> None:
        try:
            self._wake_w.send_bytes(b"!")
        except (OSError, ValueError):
            pass

    def _start(self, gpu: int | None = None) -> None:
        parent, child = self._context.Pipe()
        if gpu is None and self.gpus:
            gpu = self.gpus[self._started % len(self.gpus)]
        process = self._context.Process(
            target=worker_main, args=(child, self.spec, self._started, gpu, os.getpid(), self.log_level),
            name=f"wav2lip-trt-serve-worker-{self._started}", daemon=True)
        process.start()
        child.close()
        with self._lock:
            self._slots.append(_Slot(self._started, process, parent, gpu))
        self._started += 1

    def _dispatch(self) -> None:
        try:
            for _ in range(self.workers):
                self._start()
            while not self._closing:
                self._step()
        except Exception as exc:  # a bug in the dispatcher: say so, and stop taking jobs
            log.exception("the serve worker pool stopped")
            self.listener.pool_failed(f"internal error in the worker pool: {type(exc).__name__}: {exc}")
            self._closing = True
            self._idle.set()
        finally:
            self._stop_workers()

    def _step(self) -> None:
        slots = list(self._slots)
        handles: list[Any] = [self._wake_r] + [s.conn for s in slots if s.live is None] + \
            [s.process.sentinel for s in slots]
        for handle in wait(handles, timeout=1.0):
            if handle is self._wake_r:
                while self._wake_r.poll():
                    self._wake_r.recv_bytes()
                continue
            slot = next((s for s in slots if handle is s.conn or handle == s.process.sentinel), None)
            if slot is None or slot not in self._slots:
                continue
            message = None
            with slot.read_lock:
                if slot.live is None:  # else its live channel reads the pipe
                    message = _poll(slot.conn)
                    while message is not None and message is not _EOF:
                        self._handle(slot, message)
                        message = _poll(slot.conn)
            if message is _EOF or not slot.process.is_alive():
                self._bury(slot)
        with self._lock:
            if not self._draining:
                for slot in self._slots:
                    if self._pending and slot.ready and slot.task is None:
                        slot.task = self._pending.popleft()
                        slot.conn.send((slot.task.job_id, slot.task.options))
                        self.listener.job_started(slot.task.job_id, slot.task.attempt)
            if not any(slot.task is not None for slot in self._slots):
                self._idle.set()
            else:
                self._idle.clear()

    def _handle(self, slot: _Slot, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            slot.ready = True
            self._counts.ready += 1
            self._counts.load_deaths = 0
            self.listener.worker_ready(self._counts.ready, message[1], slot.index)
        elif kind == "fatal":
            self._counts.failed = message[2]
            self.listener.pool_failed(message[2])
        elif kind == "phase":
            self.listener.job_phase(message[1], message[2])
        elif kind == "start":
            self.listener.job_total(message[1], message[2])
        elif kind == "frame":
            self.listener.job_frame(message[1], message[2])
        elif kind in ("done", "failed", "cancelled"):
            job_id = message[1]
            with self._lock:
                slot.task = None
                cancelled = job_id in self._counts.cancelling
                self._counts.cancelling.discard(job_id)
            if cancelled or kind == "cancelled":
                self.listener.job_cancelled(job_id)
            elif kind == "done":
                self.listener.job_done(job_id, message[2], message[3], slot.index)
            else:
                self.listener.job_failed(job_id, message[2])

    def _bury(self, slot: _Slot) -> None:
        """A worker died: its job runs once more on another worker (or fails), and a new worker takes its place."""
        slot.process.join(STOP_SECONDS)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join()
        code = slot.process.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        with self._lock:
            self._slots.remove(slot)
            task, slot.task = slot.task, None
            live, slot.live = slot.live, None
            if slot.ready:
                self._counts.ready -= 1
        if live is not None:
            live.worker_died(how)  # it closes the pipe when it is done with it
            log.warning("serve worker %d died (%s) during live session %s", slot.index, how, live.id)
            task = None
        else:
            slot.conn.close()
        if task is not None and task.kind == "live":
            task = None  # its channel ended (the worker was killed after it): nothing to re-run
        if task is not None:
            _remove_partial(task)
            with self._lock:
                cancelled = task.job_id in self._counts.cancelling
                self._counts.cancelling.discard(task.job_id)
                retry = not cancelled and task.attempt == 1 and not self._draining
                if retry:
                    self._pending.appendleft(PoolTask(task.job_id, task.options, attempt=2))
            if cancelled:
                self.listener.job_cancelled(task.job_id)
            elif retry:
                log.warning("serve worker %d died (%s) running job %s; running it again", slot.index, how, task.job_id)
                self.listener.job_retried(task.job_id, how)
            elif self._draining:
                self._counts.interrupted.append(task.job_id)
            else:
                self.listener.job_failed(task.job_id, f"its worker died twice ({how}) running it")
        if self._closing or self._draining or self._counts.failed is not None:
            return
        if not slot.ready:
            self._counts.load_deaths += 1
            if self._counts.load_deaths > 2:
                self.listener.pool_failed(f"serve workers die while loading the models ({how}); too little memory "
                                          f"for {self.workers}? try fewer --workers")
                return
        self._start(slot.gpu)


def _remove_partial(task: PoolTask) -> None:
    """A killed worker cannot remove its temporary output; this does (only those patterns of names)."""
    for path in partial_paths(task.options):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
