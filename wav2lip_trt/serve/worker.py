"""Inside one serve worker process: load the session once, then run the jobs the pool hands over.

The batch workers' pieces are reused: the session is :func:`wav2lip_trt.jobs.worker.open_session`,
the process dies with its parent and unwinds on SIGTERM as a batch worker does. What is added is
what a server needs and a batch does not: progress (phase, frames) sent back while a job runs, the
job's full ``--json`` report, and cancelling one job without losing the loaded session.

Besides jobs, a worker prepares avatars, runs avatar jobs (both cancelled and reported like jobs)
and live sessions (:mod:`.worker_tasks`): a live session reads the pipe itself until it ends, then
waits for the server's ``release`` before it takes the next task.

Cancelling: the pool sends SIGUSR1. While a job runs, the handler raises :class:`JobCancelled` (a
``KeyboardInterrupt``, so every interrupt-safe ``finally`` in the pipeline runs: ffmpeg is stopped
and the temporary output removed); between jobs it is ignored. Messages to the pool are never cut
in half: a cancel that arrives while the main thread is sending is raised after the send.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from .. import errors
from ..jobs.local import _die_with_parent, _unwind
from ..jobs.worker import WorkerSpec, open_session, this_worker
from .tasks import AvatarTask, LiveTask, StreamTask, Task
from .worker_tasks import CANCEL_SIGNAL, prepare_avatar_task, run_live, stream_job, wait_release

log = logging.getLogger(__name__)

FRAME_INTERVAL = 0.05  # seconds between frame reports (the last frame is always reported)


class JobCancelled(KeyboardInterrupt):
    """Raised in the worker's main thread when the pool cancels the job it runs."""


class _Channel:
    """The worker's end of the pipe: one message at a time from any thread; a cancel never splits one."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.running = False  # a job runs: a cancel raises
        self.sending = False  # the main thread is inside send: a cancel waits for it
        self.cancel_pending = False

    def send(self, message: tuple[Any, ...]) -> None:
        main = threading.current_thread() is threading.main_thread()
        with self.lock:
            if main:
                self.sending = True
            try:
                self.conn.send(message)
            finally:
                if main:
                    self.sending = False
        if main and self.cancel_pending and self.running:
            self.cancel_pending = False
            raise JobCancelled("cancelled")

    def on_cancel(self, signum: int, frame: object) -> None:
        if not self.running:
            return  # the job ended before the signal came: the pool treats its result as cancelled
        if self.sending:
            self.cancel_pending = True
            return
        raise JobCancelled("cancelled")


def worker_main(conn: Connection, spec: WorkerSpec, index: int, gpu: int | None, parent: int, log_level: int) -> None:
    """A serve worker: ``("ready", memory)``, then per job ``phase``/``start``/``frame`` and one ending message."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the server decides
    signal.signal(signal.SIGTERM, _unwind)
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    logging.basicConfig(level=log_level, format=f"[serve worker {index}] %(message)s")
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    channel = _Channel(conn)
    signal.signal(CANCEL_SIGNAL, channel.on_cancel)
    name = this_worker(f"serve-{index}")
    try:
        try:
            session = open_session(spec)
        except errors.Wav2LipTrtError as exc:
            channel.send(("fatal", type(exc).__name__, str(exc)))
            return
        channel.send(("ready", device_memory()))
        with session:
            while True:
                try:
                    job = conn.recv()
                except (EOFError, OSError):
                    return
                if job is None:
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # leaving anyway: no unwind inside atexit
                    return
                job_id, task = job
                if isinstance(task, LiveTask):
                    channel.send(run_live(session, job_id, task, conn, channel.send))
                    if not wait_release(conn):
                        return
                else:
                    channel.send(_run(session, job_id, task, channel, name))
    except KeyboardInterrupt:
        pass  # SIGTERM from the pool: the running job's temporary output was removed on the way out


def _run(session: Any, job_id: str, task: Task, channel: _Channel, name: str) -> tuple[Any, ...]:
    """One task on ``session``: its ending message (done, failed or cancelled); never raises for the task's problems."""
    last = [0.0]

    def frame(done: int) -> None:
        now = time.monotonic()
        if now - last[0] >= FRAME_INTERVAL or done == total[0]:
            last[0] = now
            channel.send(("frame", job_id, done))

    total = [0]

    def start(frames: int) -> None:
        total[0] = frames
        channel.send(("start", job_id, frames))

    channel.running = True
    try:
        try:
            report = _work(session, task, lambda label: channel.send(("phase", job_id, label)), start, frame)
        finally:
            channel.running = False
            channel.cancel_pending = False
    except JobCancelled:
        return ("cancelled", job_id)
    except errors.Wav2LipTrtError as exc:
        return ("failed", job_id, str(exc))
    except Exception as exc:  # a bug: the traceback goes to the server's log, the client gets one line
        log.exception("job %s failed with an internal error", job_id)
        return ("failed", job_id, f"internal error: {type(exc).__name__}: {exc} (a bug; the traceback is in the "
                                  "server's log)")
    report["worker"] = name
    return ("done", job_id, report, device_memory())


def _work(session: Any, task: Task, on_phase: Any, on_start: Any, on_frame: Any) -> dict[str, Any]:
    """The task's work and its report (a job's is infer --json's)."""
    if isinstance(task, AvatarTask):
        return prepare_avatar_task(session, task, on_phase)
    if isinstance(task, StreamTask):
        return stream_job(session, task, on_phase, on_start, on_frame)
    task.validate()
    return session.run(task, on_phase=on_phase, on_start=on_start, on_frame=on_frame).report()


def device_memory() -> int | None:
    """Bytes the CUDA caching allocator holds in this process (None on a CPU)."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.memory_reserved())
