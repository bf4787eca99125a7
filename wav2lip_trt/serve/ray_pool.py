"""The pool of ``serve --ray``: :class:`~.pool.ServePool`'s interface over a Ray Serve deployment of workers.

Every job is handed to Ray Serve at once, as one streaming call to the :class:`~.ray_worker.SessionWorker`
deployment: Serve queues the calls, routes each to a free replica and, seeing them waiting, adds
replicas up to ``--max-replicas``. A thread per job follows its call and turns the worker's
messages into the :class:`~.pool.PoolListener` callbacks that the local pool makes, so the app
above (:class:`~.service.JobService`, its store, events and metrics) is the same.

As locally: a job whose worker dies (its replica killed, its node lost) runs once more, on a new
replica, after its temporary output is removed; a cancelled job stops and leaves nothing; a drain
gives running jobs ``drain_seconds`` and hands back the rest to be queued for the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import secrets
from pathlib import Path

from ..jobs.local import STOP_SECONDS
from ..jobs.ray_runner import _first_line, _lost_worker_errors
from .channel import LiveBusy, LiveChannel
from .pool import PoolListener, PoolTask, _remove_partial
from .ray_live import LiveCall
from .ray_worker import ENDINGS
from .tasks import LIVE_DEFAULTS, LiveTask, Task

log = logging.getLogger(__name__)

STATUS_SECONDS = 1.0  # how often the replica count (workers ready) is read from Serve


@dataclass
class _RayTask(PoolTask):
    response: Any = None  # the streaming call of the current attempt
    started: bool = False  # its worker said "started"
    dropped: bool = False  # cancelled or drained before it started: nothing more is reported
    cancelling: bool = False
    worker: int | None = None
    orphaned: bool = False  # a worker died running it: its ffmpeg may finish a partial output after that

    @property
    def key(self) -> str:
        return f"{self.job_id}/{self.attempt}"


@dataclass
class _State:
    replicas: int = 0  # running, by Serve's count
    loaded: bool = False  # a worker said its session loaded
    failed: str | None = None
    workers: dict[str, int] = field(default_factory=dict)  # worker name -> its index in the metrics
    interrupted: list[str] = field(default_factory=list)


class RayPool:
    """Jobs on the ``worker`` deployment (a DeploymentHandle); :meth:`submit`/:meth:`cancel` from any thread."""

    def __init__(self, worker: Any, mailbox: Any, listener: PoolListener, *, app: str, deployment: str) -> None:
        import ray
        from ray.serve.exceptions import RequestCancelledError

        self._request_cancelled = RequestCancelledError
        self.ray, self.worker, self.mailbox, self.listener = ray, worker, mailbox, listener
        self.app, self.deployment = app, deployment
        self._lost = (*_lost_worker_errors(ray), ray.exceptions.ActorUnavailableError)
        self._lock = threading.Lock()
        self._tasks: dict[str, _RayTask] = {}
        self._lives: set[LiveCall] = set()
        self._state = _State()
        self._draining = False
        self._stopped = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._monitor = threading.Thread(target=self._watch, name="wav2lip-trt-ray-workers", daemon=True)

    def start(self) -> None:
        self._monitor.start()

    @property
    def ready(self) -> int:
        state = self._state
        return state.replicas if state.loaded and state.failed is None else 0

    def queued(self) -> int:
        with self._lock:
            return sum(not task.started and not task.dropped for task in self._tasks.values())

    def running(self) -> int:
        with self._lock:
            return sum(task.started for task in self._tasks.values())

    def submit(self, job_id: str, options: Task) -> None:
        """Hand a job, an avatar to prepare or an avatar job to Serve (a replica runs the local worker's code)."""
        self._follow_in_thread(_RayTask(job_id, options))

    def open_live(self, avatar_dir: Path, settings: dict[str, Any]) -> LiveChannel:
        """A live session on a free worker now (a streaming call of its own); :class:`LiveBusy` when none is free."""
        task = LiveTask(Path(avatar_dir), {**LIVE_DEFAULTS, **settings})
        live_id = secrets.token_hex(8)
        with self._lock:
            if self._draining or self._state.failed is not None:
                raise LiveBusy("the server is not taking live sessions now (it is stopping, or its workers failed)")
            busy = sum(not task.dropped for task in self._tasks.values()) + len(self._lives)
            if busy >= self.ready:
                raise LiveBusy(f"no free worker for a live session (all {self.ready} are busy); try again later")
            call = LiveCall(lambda live: self.worker.options(stream=True).live.remote(f"live/{live_id}", live_id, live,
                                                                                      self.mailbox),
                            self.mailbox, f"live/{live_id}", self._live_closed)
            self._lives.add(call)
        channel = LiveChannel(live_id, call, call, int(task.settings["rate"]), lambda ended: call.close())
        call.channel = channel
        channel.start(task)
        return channel

    def live_sessions(self) -> int:
        with self._lock:
            return len(self._lives)

    def _live_closed(self, call: LiveCall) -> None:
        with self._lock:
            self._lives.discard(call)

    def cancel(self, job_id: str) -> str | None:
        """``"queued"`` (it will never run), ``"running"`` (its worker was told; job_cancelled follows) or None."""
        with self._lock:
            task = self._tasks.get(job_id)
            if task is None or task.dropped:
                return None
            task.cancelling = True
        where = self.ray.get(self.mailbox.cancel.remote(task.key))
        if where == "queued":
            self._drop(task)
        return where

    def stop(self, drain_seconds: float) -> list[str]:
        """Start nothing new; give running jobs ``drain_seconds``, then stop them. Returns the jobs cut short."""
        with self._lock:
            self._draining = True
            waiting = [task for task in self._tasks.values() if not task.started]
            lives = list(self._lives)
        for call in lives:  # as locally: the session stops, its websocket is closed
            call.channel.abort()
        for task in waiting:
            if self.ray.get(self.mailbox.cancel.remote(task.key)) == "queued":
                self._drop(task)
                self._state.interrupted.append(task.job_id)
        deadline = time.monotonic() + drain_seconds
        with self._lock:
            while any(not task.dropped for task in self._tasks.values()) and time.monotonic() < deadline:
                self._idle.wait(deadline - time.monotonic())
            running = [task for task in self._tasks.values() if not task.dropped]
        for task in running:  # the worker stops it at its next report; its ending is recorded as interrupted
            self.mailbox.cancel.remote(task.key)
        deadline = time.monotonic() + STOP_SECONDS
        with self._lock:
            while any(not task.dropped for task in self._tasks.values()) and time.monotonic() < deadline:
                self._idle.wait(deadline - time.monotonic())
            for task in self._tasks.values():
                if not task.dropped:  # its worker did not answer: cut the call, remove what it was writing
                    task.dropped = True
                    if task.response is not None:
                        task.response.cancel()
                    _remove_partial(task)
                    self._state.interrupted.append(task.job_id)
        self._stopped.set()
        return self._state.interrupted

    # ---- following the calls (one thread per job) ----------------------------------------------------

    def _follow_in_thread(self, task: _RayTask) -> None:
        with self._lock:
            self._tasks[task.job_id] = task
        threading.Thread(target=self._follow, args=(task,), name=f"wav2lip-trt-ray-job-{task.job_id}",
                         daemon=True).start()

    def _follow(self, task: _RayTask) -> None:
        try:
            while self._attempt(task):
                pass
        except Exception as exc:  # a bug here: the job fails with one line, the pool goes on
            log.exception("following job %s on Ray failed", task.job_id)
            self._report(task, "job_failed", task.job_id,
                         f"internal error in the Ray pool: {type(exc).__name__}: {exc}")
        finally:
            self.mailbox.forget.remote(task.key)
            with self._lock:
                task.dropped = True
                self._tasks.pop(task.job_id, None)
                self._idle.notify_all()

    def _attempt(self, task: _RayTask) -> bool:
        """One call; True when the job is to run again (its worker died on the first attempt)."""
        with self._lock:
            if task.dropped:
                return False
            task.response = self.worker.options(stream=True).run.remote(task.key, task.job_id, task.options,
                                                                        self.mailbox)
        try:
            for message in task.response:
                self._handle(task, message)
                if message[0] in ENDINGS:
                    return False
        except self._request_cancelled:
            return False  # dropped: cancelled or drained before it ran
        except self._lost as exc:
            return self._lost_worker(task, _first_line(exc))
        except self.ray.exceptions.RayTaskError as exc:  # a bug in the worker's method; the replica lives on
            self._report(task, "job_failed", task.job_id, f"internal error: {_first_line(exc)}")
            return False
        if not task.dropped:
            return self._lost_worker(task, "its call ended without an answer")
        return False

    def _handle(self, task: _RayTask, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "started":
            with self._lock:
                task.started = True
                task.worker = self._state.workers.setdefault(message[1], len(self._state.workers))
            self._report(task, "job_started", task.job_id, task.attempt)
        elif kind == "phase":
            self._report(task, "job_phase", task.job_id, message[2])
        elif kind == "start":
            self._report(task, "job_total", task.job_id, message[2])
        elif kind == "frame":
            self._report(task, "job_frame", task.job_id, message[2])
        elif kind in ENDINGS:
            if task.orphaned:  # what the dead worker's ffmpeg finished since (batch --ray does the same)
                _remove_partial(task)
            if self._draining and task.cancelling is False and kind == "cancelled":
                self._interrupted(task)  # stopped by the drain: queued again for the next start
            elif task.cancelling or kind == "cancelled":
                self._report(task, "job_cancelled", task.job_id)
            elif kind == "done":
                self._report(task, "job_done", task.job_id, message[2], message[3], task.worker or 0)
            else:
                self._report(task, "job_failed", task.job_id, message[2])

    def _lost_worker(self, task: _RayTask, why: str) -> bool:
        _remove_partial(task)  # a killed worker cannot remove its temporary output
        task.orphaned = True
        if task.dropped:
            return False
        if task.cancelling:
            self._report(task, "job_cancelled", task.job_id)
        elif self._draining:
            self._interrupted(task)
        elif task.attempt == 1:
            log.warning("Ray serve worker died running job %s (%s); running it again", task.job_id, why)
            self.mailbox.forget.remote(task.key)
            with self._lock:
                task.attempt, task.started = 2, False
            self._report(task, "job_retried", task.job_id, why)
            return True
        else:
            self._report(task, "job_failed", task.job_id, f"its worker died twice ({why}) running it")
        return False

    def _interrupted(self, task: _RayTask) -> None:
        with self._lock:
            if not task.dropped:
                task.dropped = True
                self._state.interrupted.append(task.job_id)

    def _drop(self, task: _RayTask) -> None:
        with self._lock:
            task.dropped = True
            response = task.response
        if response is not None:
            response.cancel()

    def _report(self, task: _RayTask, callback: str, *args: Any) -> None:
        """A listener callback, unless the job was dropped (its end is reported already, or it goes back to the
        queue)."""
        if not task.dropped:
            getattr(self.listener, callback)(*args)

    # ---- the workers: loaded, counted ------------------------------------------------------------

    def _probe(self) -> None:
        """Ask one worker whether its session loaded: its error (every worker's) fails the pool."""
        try:
            error, memory, name = self.worker.ready.remote().result()
        except Exception as exc:
            error, memory, name = f"the Ray workers do not start: {_first_line(exc)}", None, ""
        if self._stopped.is_set():
            return
        if error is not None:
            self._fail(error)
            return
        with self._lock:
            self._state.loaded = True
            index = self._state.workers.setdefault(name, len(self._state.workers))
        self.listener.worker_ready(self.ready, memory, index)

    def _watch(self) -> None:
        """Follow the count of running replicas (each one loaded its session before Serve routes to it)."""
        from ray import serve

        threading.Thread(target=self._probe, name="wav2lip-trt-ray-probe", daemon=True).start()
        while not self._stopped.is_set() and self._state.failed is None:
            try:
                status = serve.status().applications[self.app].deployments[self.deployment]
            except Exception as exc:  # the controller is restarting, or the app is being deleted
                log.debug("no Serve status: %s", exc)
            else:
                if status.status == "DEPLOY_FAILED":
                    self._fail(f"the Ray workers do not start: {_first_line(Exception(status.message))}")
                    return
                self._state.replicas = int(status.replica_states.get("RUNNING", 0))
            self._stopped.wait(STATUS_SECONDS)

    def _fail(self, error: str) -> None:
        self._state.failed = error
        self.listener.pool_failed(error)
