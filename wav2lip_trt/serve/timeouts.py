"""Request and job timeouts: no client holds a connection, and no job a worker, longer than the server allows.

Requests (``--request-timeout``), three phases:

- idle between requests on a kept-alive connection: uvicorn's own ``timeout_keep_alive`` (5 s);
- the request line and headers: uvicorn arms no timer on a new connection (its keep-alive timer
  starts only after a response), so one that sends half a header line, a byte at a time (slowloris),
  would be held forever. :func:`header_deadline_protocol` adds that timer to uvicorn's HTTP protocol:
  408 and the connection closed;
- the body: :class:`RequestTimeout` gives it ``seconds`` from the end of the headers to arrive in
  full (a total, not an idle time, so trickling does not extend it): 408 and the connection closed.

Requests without a body (the event streams, the result, deletes) and websockets are not timed: an
event stream or a live session lasts as long as it needs, and the server only writes to it.

Jobs (``--job-timeout``): :class:`JobWatch`, one thread that ticks every half second. A job running
(since its worker took it) longer than the limit is cancelled through the pool's cancel path (the
worker stops, its partial output is removed, its session stays loaded) and fails saying so. The same
tick measures running jobs' folders for the disk quota (:mod:`.quota`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .quota import DiskQuota, declared_length
from .responses import BodyRefused, error_response, run_refusable

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5


def timeout_message(seconds: float) -> str:
    return f"the request did not arrive in full within {seconds:g} s (--request-timeout); the connection is closed"


class RequestTimeout:
    """ASGI: a request body must be complete within ``seconds`` of its headers, else 408 and the connection closes."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.seconds or declared_length(scope) is None:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        complete = False

        async def timed() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise BodyRefused(error_response(408, timeout_message(self.seconds), {"Connection": "close"})) \
                    from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await run_refusable(self.app, scope, receive, send, timed)


def header_deadline_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (the one it would pick) with a deadline on each request's line and headers."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    response = error_response(408, timeout_message(seconds), {"Connection": "close"})
    answer = (b"HTTP/1.1 408 Request Timeout\r\n" + b"".join(name + b": " + value + b"\r\n"
                                                            for name, value in response.raw_headers)
              + b"\r\n" + response.body)

    class HeaderDeadline(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        """Armed when the connection opens and after each response; disarmed once a request's headers are in."""

        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle or self.transport.get_protocol() is not self:  # headers in, or a websocket
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            busy = self.cycle is not None and not self.cycle.response_complete
            if busy or self.transport.is_closing() or self.transport.get_protocol() is not self:
                return
            self.transport.write(answer)
            self.transport.close()

    return HeaderDeadline


class JobWatch:
    """Running jobs against ``--job-timeout`` and the disk quota; :meth:`reason` says why a job was stopped.

    ``stop_job`` is the service's cancel (the pool's cancel path); the service then asks
    :meth:`reason` and, when there is one, marks the job failed with it instead of cancelled.
    """

    def __init__(self, timeout: float, quota: DiskQuota, stop_job: Callable[[str], None],
                 tick: float = TICK_SECONDS) -> None:
        self.timeout, self.quota, self.stop_job, self.tick = timeout, quota, stop_job, tick
        self._running: dict[str, float] = {}  # job id -> monotonic time its worker took it
        self._reasons: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="wav2lip-trt-serve-watch", daemon=True)

    def start(self) -> None:
        if self.timeout > 0 or self.quota.limit:
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def started(self, job_id: str) -> None:
        """A worker took the job (again, after a worker died: the clock restarts)."""
        with self._lock:
            self._running[job_id] = time.monotonic()
            self._reasons.pop(job_id, None)

    def ended(self, job_id: str) -> None:
        with self._lock:
            self._running.pop(job_id, None)
            self._reasons.pop(job_id, None)

    def reason(self, job_id: str) -> str | None:
        """Why the watch stopped this job (None: it did not)."""
        with self._lock:
            return self._reasons.get(job_id)

    def check(self) -> None:
        """One tick: stop the jobs past the time limit, then those whose output takes the quota over."""
        now = time.monotonic()
        with self._lock:
            running = {job_id: since for job_id, since in self._running.items() if job_id not in self._reasons}
        if self.timeout > 0:
            for job_id, since in running.items():
                if now - since > self.timeout:
                    self._stop(job_id, f"the job exceeded --job-timeout {self.timeout:g} s (the server's limit on "
                                       "one job's running time); its partial output was removed")
        if not self.quota.limit or not running:
            return
        for job_id in running:
            self.quota.account(job_id)
        if self.quota.excess() and not self.quota.make_room():
            with self._lock:
                candidates = [job_id for job_id in running if job_id not in self._reasons]
            if candidates:
                biggest = max(candidates, key=self.quota.size)
                self._stop(biggest, "the job's output would take the server past its disk quota (--max-disk-gb); "
                                    "its partial output was removed")

    def _stop(self, job_id: str, reason: str) -> None:
        with self._lock:
            if job_id not in self._running or job_id in self._reasons:
                return  # it ended meanwhile, or is being stopped
            self._reasons[job_id] = reason
        log.warning("stopping job %s: %s", job_id, reason)
        self.stop_job(job_id)

    def _loop(self) -> None:
        while not self._stopped.wait(self.tick):
            try:
                self.check()
            except Exception:  # a bug here must not end the watch, nor the server
                log.exception("the job watch failed")
