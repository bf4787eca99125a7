"""What ``serve --ray`` runs on the cluster beside the app: the session workers and the mailbox between them.

:class:`SessionWorker` is a Ray Serve deployment, each replica holding one session (one per GPU on
a cluster with GPUs), taking one request at a time (``max_ongoing_requests=1``), so Serve's
autoscaler counts a running or waiting job as an ongoing request. A job is one streaming call: it
answers with the same messages a local serve worker sends down its pipe (``phase``, ``start``,
``frame``, then ``done``/``failed``/``cancelled``), made by the same function
(:func:`.worker._run`) on the same session; first comes ``("started", worker name)``.

:class:`Mailbox` is one small Ray actor that the app (the ingress) owns. It decides, for each
attempt at a job, whether a worker has claimed it or a client has cancelled it first, so a
cancelled job never starts and a running one is told to stop (the worker asks every
:data:`CANCEL_POLL_SECONDS`; the job stops at its next progress report and removes its temporary
output, as a local worker's does on SIGUSR1).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import errors
from ..jobs.worker import WorkerSpec, open_session, this_worker
from ..options import InferenceOptions
from .worker import JobCancelled, _run, device_memory

log = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 0.25
CLEANUP_SECONDS = 30.0  # a request cut off by Serve: how long the job may take to unwind before the replica moves on
ENDINGS = ("done", "failed", "cancelled")


class Mailbox:
    """A Ray actor: per attempt at a job, claimed by a worker or cancelled by a client, whichever came first."""

    def __init__(self) -> None:
        self.claimed: set[str] = set()
        self.cancelled: set[str] = set()

    def claim(self, key: str) -> bool:
        """A worker is about to run ``key``: False if it was cancelled first (it must not run)."""
        if key in self.cancelled:
            return False
        self.claimed.add(key)
        return True

    def cancel(self, key: str) -> str:
        """``"running"`` if a worker claimed ``key`` (it will stop), else ``"queued"`` (it will never run)."""
        self.cancelled.add(key)
        return "running" if key in self.claimed else "queued"

    def is_cancelled(self, key: str) -> bool:
        return key in self.cancelled

    def forget(self, key: str) -> None:
        self.claimed.discard(key)
        self.cancelled.discard(key)


class _Relay:
    """Stands in for the local worker's pipe end in :func:`.worker._run`: messages go to the replica's event loop,
    and once the job is cancelled its next message from the job's own thread raises :class:`JobCancelled` there."""

    def __init__(self, put: Callable[[tuple[Any, ...]], None]) -> None:
        self.put = put
        self.running = False  # set by _run while the session runs the job
        self.cancel_pending = False  # reset by _run; a relay never defers a cancel
        self.cancelled = False
        self.thread: int | None = None

    def send(self, message: tuple[Any, ...]) -> None:
        self.put(message)
        if self.cancelled and self.running and threading.get_ident() == self.thread:
            self.running = False  # raised once: the unwinding job's own reports pass
            raise JobCancelled("cancelled")


class SessionWorker:
    """A Serve replica's state: one session loaded when the replica starts, one job at a time on it."""

    def __init__(self, spec: WorkerSpec, log_level: int = logging.WARNING) -> None:
        logging.basicConfig(level=log_level, format="[serve worker] %(message)s")
        self.name = this_worker("ray-serve")
        self.session: Any = None
        self.error: str | None = None
        try:
            self.session = open_session(spec)
        except errors.Wav2LipTrtError as exc:  # reported by ready() and by every job: the app shows it in /readyz
            self.error = str(exc)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="wav2lip-trt-job")  # a session runs one job at once

    def ready(self) -> tuple[str | None, int | None, str]:
        """(the session's load error or None, device memory in bytes or None, this worker's name)."""
        return self.error, device_memory(), self.name

    async def run(self, key: str, job_id: str, options: InferenceOptions, mailbox: Any) -> AsyncIterator[tuple[Any, ...]]:
        """One attempt (``key``) at a job: ``("started", name)``, then the local worker's messages to the ending one."""
        if not await mailbox.claim.remote(key):
            yield ("cancelled", job_id)
            return
        yield ("started", self.name)
        if self.error is not None:
            yield ("failed", job_id, self.error)
            return
        loop = asyncio.get_running_loop()
        messages: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        relay = _Relay(lambda message: loop.call_soon_threadsafe(messages.put_nowait, message))

        def job() -> None:
            relay.thread = threading.get_ident()
            relay.put(_run(self.session, job_id, options, relay, self.name))

        work = loop.run_in_executor(self.executor, job)
        checked = time.monotonic()
        try:
            while True:
                try:
                    message = await asyncio.wait_for(messages.get(), CANCEL_POLL_SECONDS)
                except asyncio.TimeoutError:
                    message = None
                if message is not None:
                    yield message
                    if message[0] in ENDINGS:
                        break
                if not relay.cancelled and time.monotonic() - checked >= CANCEL_POLL_SECONDS:
                    checked = time.monotonic()
                    relay.cancelled = await mailbox.is_cancelled.remote(key)
            await work
        except (asyncio.CancelledError, GeneratorExit):  # Serve cut the request off (the app is going away)
            relay.cancelled = True
            await asyncio.wait([work], timeout=CLEANUP_SECONDS)  # its temporary output goes before the next job
            raise
