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
output, as a local worker's does on SIGUSR1). It also carries a live session's input: the PCM,
close and abort messages the local pool writes down a worker's pipe, in a bounded inbox read by
the same :func:`.worker_tasks.run_live`, and the frames the app has taken (so no more than
:data:`LIVE_WINDOW` frames are on their way: a client that reads slowly slows the session down, as
the pipe does locally).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import errors
from ..jobs.worker import WorkerSpec, open_session, this_worker
from .tasks import LiveTask, Task
from .worker import JobCancelled, _run, device_memory
from .worker_tasks import run_live

log = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 0.25
CLEANUP_SECONDS = 30.0  # a request cut off by Serve: how long the job may take to unwind before the replica moves on
ENDINGS = ("done", "failed", "cancelled")
LIVE_ENDINGS = ("live-end", "failed", "cancelled")
INBOX_MESSAGES = 64  # a live session's messages waiting for its worker (PCM of 200 ms: 13 s of audio)
LIVE_WINDOW = 16  # a live session's frames sent and not yet taken by the app
WINDOW_POLL_SECONDS = 0.05


class Mailbox:
    """A Ray actor: per attempt at a job, claimed by a worker or cancelled by a client, whichever came first;
    per live session, the inbox of its worker and the frames the app has taken."""

    def __init__(self) -> None:
        self.claimed: set[str] = set()
        self.cancelled: set[str] = set()
        self.inboxes: dict[str, deque[tuple[Any, ...]]] = {}
        self.arrived: dict[str, asyncio.Event] = {}
        self.taken: dict[str, int] = {}

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

    def put(self, key: str, message: tuple[Any, ...]) -> bool:
        """A message for live session ``key``'s worker; False while its inbox is full (try again)."""
        inbox = self.inboxes.setdefault(key, deque())
        if message[0] == "abort":  # ahead of the PCM still waiting: the session stops now
            inbox.appendleft(message)
        elif len(inbox) >= INBOX_MESSAGES:
            return False
        else:
            inbox.append(message)
        self.arrived.setdefault(key, asyncio.Event()).set()
        return True

    async def take(self, key: str, timeout: float) -> list[tuple[Any, ...]]:
        """Live session ``key``'s messages so far, waiting up to ``timeout`` seconds for one."""
        inbox = self.inboxes.setdefault(key, deque())
        if not inbox:
            arrived = self.arrived.setdefault(key, asyncio.Event())
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), timeout)
            except asyncio.TimeoutError:
                return []
        messages = list(inbox)
        inbox.clear()
        return messages

    def took(self, key: str, frames: int) -> None:
        """The app has taken ``frames`` frames of live session ``key``."""
        self.taken[key] = max(self.taken.get(key, 0), frames)

    def frames_taken(self, key: str) -> int:
        return self.taken.get(key, 0)

    def forget(self, key: str) -> None:
        for table in (self.inboxes, self.arrived, self.taken):
            table.pop(key, None)
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


class _Inbox:
    """Stands in for the local worker's pipe in :func:`.worker_tasks.run_live`: ``poll``/``recv`` read the
    session's inbox in the mailbox; :meth:`window` holds a frame back while :data:`LIVE_WINDOW` are untaken."""

    def __init__(self, mailbox: Any, key: str) -> None:
        self.mailbox, self.key = mailbox, key
        self.pending: deque[tuple[Any, ...]] = deque()
        self.aborted = False  # Serve cut the session off
        self.sent = 0
        self.taken = 0

    def poll(self, timeout: float) -> bool:
        import ray

        if not self.pending and not self.aborted:
            self.pending.extend(ray.get(self.mailbox.take.remote(self.key, timeout)))
            self.aborted = ("abort",) in self.pending  # before the PCM taken with it
        return bool(self.pending) or self.aborted

    def recv(self) -> tuple[Any, ...]:
        return ("abort",) if self.aborted else self.pending.popleft()

    def window(self) -> None:
        import ray

        while self.sent - self.taken >= LIVE_WINDOW and not self.aborted:
            self.taken = ray.get(self.mailbox.frames_taken.remote(self.key))
            if self.sent - self.taken >= LIVE_WINDOW:
                time.sleep(WINDOW_POLL_SECONDS)
        self.sent += 1


class SessionWorker:
    """A Serve replica's state: one session loaded when the replica starts, one task at a time on it."""

    def __init__(self, spec: WorkerSpec, log_level: int = logging.WARNING) -> None:
        logging.basicConfig(level=log_level, format="[serve worker] %(message)s")
        self.name = this_worker("ray-serve")
        self.session: Any = None
        self.error: str | None = None
        try:
            self.session = open_session(spec)
        except errors.Wav2LipTrtError as exc:  # reported by ready() and by every task: the app shows it in /readyz
            self.error = str(exc)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="wav2lip-trt-task")  # a session runs one at once

    def ready(self) -> tuple[str | None, int | None, str]:
        """(the session's load error or None, device memory in bytes or None, this worker's name)."""
        return self.error, device_memory(), self.name

    async def run(self, key: str, job_id: str, task: Task, mailbox: Any) -> AsyncIterator[tuple[Any, ...]]:
        """One attempt (``key``) at a job, an avatar or an avatar job: ``("started", name)``, then the local
        worker's messages to the ending one."""
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

        def work() -> None:
            relay.thread = threading.get_ident()
            relay.put(_run(self.session, job_id, task, relay, self.name))

        async def cancelled() -> bool:
            relay.cancelled = relay.cancelled or await mailbox.is_cancelled.remote(key)
            return relay.cancelled

        def cut() -> None:
            relay.cancelled = True

        async for message in self._relay(work, messages, ENDINGS, cancelled, cut):
            yield message

    async def live(self, key: str, live_id: str, task: LiveTask, mailbox: Any) -> AsyncIterator[tuple[Any, ...]]:
        """A live session: the messages a local worker sends for one (``live-ready``, ``live-frame``s, the end),
        its input read from the mailbox."""
        if not await mailbox.claim.remote(key):
            yield ("cancelled", live_id)
            return
        if self.error is not None:
            yield ("failed", live_id, self.error, "internal")
            return
        loop = asyncio.get_running_loop()
        messages: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        inbox = _Inbox(mailbox, key)

        def put(message: tuple[Any, ...]) -> None:
            loop.call_soon_threadsafe(messages.put_nowait, message)

        def send(message: tuple[Any, ...]) -> None:
            if message[0] == "live-frame":
                inbox.window()
            put(message)

        def work() -> None:
            put(run_live(self.session, live_id, task, inbox, send))

        async def never() -> bool:
            return False

        def cut() -> None:
            inbox.aborted = True

        async for message in self._relay(work, messages, LIVE_ENDINGS, never, cut):
            yield message

    async def _relay(self, work: Callable[[], None], messages: asyncio.Queue[tuple[Any, ...]],
                     endings: tuple[str, ...], cancelled: Callable[[], Any],
                     cut: Callable[[], None]) -> AsyncIterator[tuple[Any, ...]]:
        """Run ``work`` on the session's thread and pass its messages on to the ending one; ask ``cancelled()``
        every :data:`CANCEL_POLL_SECONDS`. A request Serve cuts off (the app going away) is ``cut()`` and given
        :data:`CLEANUP_SECONDS` to unwind (its temporary output goes) before the replica takes the next."""
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(self.executor, work)
        checked = time.monotonic()
        try:
            while True:
                try:
                    message = await asyncio.wait_for(messages.get(), CANCEL_POLL_SECONDS)
                except asyncio.TimeoutError:
                    message = None
                if message is not None:
                    yield message
                    if message[0] in endings:
                        break
                if time.monotonic() - checked >= CANCEL_POLL_SECONDS:
                    checked = time.monotonic()
                    await cancelled()
            await running
        except (asyncio.CancelledError, GeneratorExit):
            cut()
            await asyncio.wait([running], timeout=CLEANUP_SECONDS)
            raise
