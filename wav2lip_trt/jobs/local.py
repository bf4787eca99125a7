"""Local workers: processes on this machine, each holding one session, handed one job at a time.

Processes, not threads: the pipeline's Python stages hold the GIL, and one session's CUDA graph and
streams are not shared between concurrent calls. They start with ``spawn`` (forking a process
that has imported torch, let alone used CUDA, is unsafe) and die with the batch process, even when
it is killed with SIGKILL (``PR_SET_PDEATHSIG`` on Linux, a watchdog elsewhere), so a killed batch
leaves no worker behind that could finish a job while a resumed batch runs it again. They die with
the process, not with the thread that started them (see :func:`_die_with_parent`).

Each worker gets the next job when it reports the last one, so a slow job never holds others up. A
worker that dies (the kernel's OOM killer, a crash in a native library) is replaced, the temporary
output it was writing is removed, and the job it was running is retried once on another worker, as
on Ray.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from .. import errors
from ..errors import InputError
from .results import Outcome
from .worker import Task, WorkerSpec, failed, open_session, remove_temporaries, run_task, temporaries, this_worker

log = logging.getLogger(__name__)

STOP_SECONDS = 10.0  # a worker asked to stop gets this long before it is killed
MAX_CPU_WORKERS = 4  # sessions on a CPU; beyond this each would add memory more than speed


def cpu_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_count(device: str) -> int:
    """GPUs the workers would use: torch's count for ``cuda``/``auto``, none for ``cpu``."""
    if device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_workers(device: str, cores: int | None = None) -> int:
    """One worker per GPU; on a CPU one per core, at most four (so on larger machines each gets several threads).

    Several single-threaded sessions beat one session with every thread: the generator's threads
    scale poorly on a 1 s job's small batches, and the parts that run on one thread (audio, decode,
    paste, ffmpeg) overlap across workers. Each session holds its own models (~0.5 GB of memory at
    320x240), hence the cap. Measured in benchmarks/README.md ("Many jobs").
    """
    gpus = gpu_count(device)
    if gpus:
        return gpus
    cores = cpu_cores() if cores is None else cores
    return max(1, min(MAX_CPU_WORKERS, cores))


@dataclass
class _Slot:
    index: int
    process: Any  # multiprocessing's SpawnProcess
    conn: Connection
    gpu: int | None = None
    task: Task | None = None
    ready: bool = False
    before: set[Path] = field(default_factory=set)  # the task's temporary files that existed when it was handed out


class LocalPool:
    """``workers`` processes with one session each; GPUs handed out round-robin (``gpus``), CPU cores split evenly."""

    def __init__(self, spec: WorkerSpec, workers: int, *, gpus: Sequence[int] = (),
                 log_level: int = logging.WARNING) -> None:
        if workers < 1:
            raise InputError(f"--workers must be at least 1, got {workers}")
        self.spec, self.workers, self.gpus, self.log_level = spec, workers, list(gpus), log_level
        self._context = multiprocessing.get_context("spawn")
        self._slots: list[_Slot] = []
        self._started = 0
        self._load_deaths = 0
        self._orphans: list[tuple[Task, set[Path]]] = []  # jobs of dead workers: their temporary files go at the end

    def run(self, tasks: Sequence[Task], on_outcome: Callable[[Outcome], None],
            on_ready: Callable[[int], None] | None = None) -> None:
        """Run every task; ``on_outcome`` per finished job (in this thread), ``on_ready(n)`` as workers load.

        A worker whose session cannot load raises that error here (every job would hit it).
        """
        pending = deque(tasks)
        restarts = len(tasks) + self.workers
        try:
            for _ in range(min(self.workers, len(pending))):
                self._start()
            while pending or any(slot.task is not None for slot in self._slots):
                if not self._slots:  # every worker died and none could be restarted
                    for task in pending:
                        on_outcome(failed(task, "no batch worker left to run it", None))
                    return
                by_handle = {id(s.conn): s for s in self._slots} | {id(s.process.sentinel): s for s in self._slots}
                for handle in wait([s.conn for s in self._slots] + [s.process.sentinel for s in self._slots]):
                    slot = by_handle[id(handle)]
                    if slot not in self._slots:
                        continue  # its connection and its sentinel fired together
                    message = _poll(slot.conn)
                    while message is not None and message is not _EOF:  # reports first: a job may end, then its worker
                        self._handle(slot, message, on_outcome, on_ready)
                        message = _poll(slot.conn)
                    if message is _EOF or not slot.process.is_alive():
                        restarts = self._bury(slot, pending, on_outcome, restarts)
                for slot in self._slots:  # a retried job goes to any worker that is free
                    if pending and slot.ready and slot.task is None:
                        slot.task = pending.popleft()
                        slot.before = temporaries(slot.task)
                        slot.conn.send(slot.task)
        finally:
            self._stop()
            for task, before in self._orphans:  # again: the dead worker's ffmpeg may have outlived it a moment
                remove_temporaries(task, before)

    def _handle(self, slot: _Slot, message: tuple[Any, ...], on_outcome: Callable[[Outcome], None],
                on_ready: Callable[[int], None] | None) -> None:
        if message[0] == "fatal":
            raise getattr(errors, message[1], errors.Wav2LipTrtError)(message[2])
        if message[0] == "ready":
            slot.ready = True
            if on_ready is not None:
                on_ready(sum(s.ready for s in self._slots))
        elif message[0] == "done":
            slot.task = None
            on_outcome(message[1])

    def _start(self, gpu: int | None = None) -> None:
        parent, child = self._context.Pipe()
        if gpu is None and self.gpus:
            gpu = self.gpus[self._started % len(self.gpus)]
        process = self._context.Process(
            target=_worker_main, args=(child, self.spec, self._started, gpu, os.getpid(), self.log_level),
            name=f"wav2lip-trt-worker-{self._started}", daemon=True)
        process.start()
        child.close()
        self._slots.append(_Slot(self._started, process, parent, gpu))
        self._started += 1

    def _bury(self, slot: _Slot, pending: deque[Task], on_outcome: Callable[[Outcome], None], restarts: int) -> int:
        """A worker died: retry its job once elsewhere (or fail it), and start a replacement if work is left."""
        slot.process.join(STOP_SECONDS)
        if slot.process.is_alive():  # its end of the pipe closed, yet it lingers
            slot.process.kill()
            slot.process.join()
        code = slot.process.exitcode
        self._slots.remove(slot)
        slot.conn.close()
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        if not slot.ready:
            self._load_deaths += 1
            if self._load_deaths > 1 or not (pending or self._slots):
                raise InputError(f"batch workers die while loading the models ({how}); too little memory for "
                                 f"{self.workers}? try fewer --workers")
            log.warning("batch worker %d died while loading the models (%s); starting another", slot.index, how)
        if slot.task is not None:
            self._orphans.append((slot.task, slot.before))
            remove_temporaries(slot.task, slot.before)  # before a retry starts its own
            if slot.task.attempt == 1:
                log.warning("batch worker %d died (%s) running line %d; retrying it on another worker",
                            slot.index, how, slot.task.line)
                pending.appendleft(replace(slot.task, attempt=2))
            else:
                on_outcome(failed(slot.task, f"its worker died twice ({how}) running it", f"local-{slot.index}"))
        if pending and restarts > 0 and len(self._slots) < min(self.workers, len(pending)):
            self._start(slot.gpu)
            return restarts - 1
        return restarts

    def _stop(self) -> None:
        """Idle workers are told to exit; busy ones (an interrupt or an error here) get SIGTERM and unwind."""
        for slot in self._slots:
            try:
                if slot.task is None and slot.process.is_alive():
                    slot.conn.send(None)
                else:
                    slot.process.terminate()
            except (OSError, ValueError):
                slot.process.terminate()
        for slot in self._slots:
            slot.process.join(STOP_SECONDS)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
            slot.conn.close()
        self._slots.clear()


_EOF = ("eof",)


def _poll(conn: Connection) -> tuple[Any, ...] | None:
    """The next message if one is waiting, ``_EOF`` once the worker's end is closed, else None."""
    try:
        return conn.recv() if conn.poll() else None
    except (EOFError, OSError):
        return _EOF


def _receive(conn: Connection) -> Any:
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


def _worker_main(conn: Connection, spec: WorkerSpec, index: int, gpu: int | None, parent: int, log_level: int) -> None:
    """A worker process: load the session, then run tasks until told to stop (``None``) or the parent goes."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    signal.signal(signal.SIGTERM, _unwind)
    logging.basicConfig(level=log_level, format=f"[worker {index}] %(message)s")
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # read when CUDA initialises, which has not happened yet
    name = this_worker(f"local-{index}")
    try:
        try:
            session = open_session(spec)
        except errors.Wav2LipTrtError as exc:
            conn.send(("fatal", type(exc).__name__, str(exc)))
            return
        conn.send(("ready",))
        with session:
            while (task := _receive(conn)) is not None:
                conn.send(("done", run_task(session, task, name)))
    except KeyboardInterrupt:
        pass  # stopped by the parent: the job's output (a temporary file) has been removed on the way out


def _unwind(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(signal.Signals(signum).name)


PARENT_DEATH_SIGNAL = signal.SIGUSR2
"""What the kernel sends a worker when the thread that started it ends (``PR_SET_PDEATHSIG``); SIGUSR1 is
the serve pool's cancel (:data:`wav2lip_trt.serve.worker_tasks.CANCEL_SIGNAL`), SIGTERM any pool's stop."""


def _die_with_parent(parent: int) -> None:
    """End this process when the process ``parent`` ends, however it ends (SIGKILL included).

    ``PR_SET_PDEATHSIG`` fires when the *thread* that started this process ends, not its process:
    a pool that starts a worker from a thread that then ends (a dispatcher, a helper starting a
    replacement) would lose a worker it still counts on. And it fires again each time the worker
    is handed to another of the parent's threads, finally when the last one ends. So the signal is
    not SIGTERM (which the pool sends to stop a worker) but :data:`PARENT_DEATH_SIGNAL`, whose
    handler unwinds only when the parent process is gone: the worker has been handed to a process
    that is not ``parent`` (init or a subreaper).
    """
    signal.signal(PARENT_DEATH_SIGNAL, functools.partial(_on_parent_signal, parent))
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, PARENT_DEATH_SIGNAL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):
        threading.Thread(target=_watch_parent, args=(parent,), name="wav2lip-trt-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)


def _on_parent_signal(parent: int, signum: int, frame: object) -> None:
    if os.getppid() != parent:  # the process is gone, not just the thread that started this worker
        _unwind(signal.SIGTERM, frame)


def _watch_parent(parent: int) -> None:
    import time

    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
