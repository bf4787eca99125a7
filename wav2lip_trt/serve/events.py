"""Server-sent events of one job: progress published from the pool's thread, streamed by the event loop.

Each event is one JSON object in ``data:`` under an ``event:`` name:

- ``status``   ``{"status": "running", "attempt": 1}`` when the job changes state;
- ``progress`` ``{"phase": ..., "frames_done": ..., "frames_total": ..., "fraction": ..., "eta_seconds": ...}``,
  on a phase change and as frames are written (a few times a second at most);
- ``end``      the job as ``GET /v1/jobs/{id}`` gives it, once it has finished (report or error); the
  stream closes after it.

A stream starts with the job's current state, so a client that connects late misses nothing.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

KEEPALIVE_SECONDS = 10.0
POLL_SECONDS = 0.5  # how often a waiting stream checks for a disconnect or a shutdown


class EventHub:
    """Subscribers per job: asyncio queues fed from any thread."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._subscribers: dict[str, set[asyncio.Queue[tuple[str, dict[str, Any]]]]] = {}

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def subscribe(self, job_id: str) -> asyncio.Queue[tuple[str, dict[str, Any]]]:
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        with self._lock:
            self._subscribers.setdefault(job_id, set()).add(queue)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue[tuple[str, dict[str, Any]]]) -> None:
        with self._lock:
            queues = self._subscribers.get(job_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._subscribers[job_id]

    def publish(self, job_id: str, name: str, data: dict[str, Any]) -> None:
        with self._lock:
            queues = list(self._subscribers.get(job_id, ()))
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        for queue in queues:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (name, data))
            except RuntimeError:  # the loop closed in between (shutdown)
                return


def format_event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def stream(hub: EventHub, job_id: str, snapshot: Callable[[], dict[str, Any] | None],
                 stopping: Callable[[], bool], disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[str]:
    """The event stream of ``job_id``; ``snapshot()`` is the job's public view (None once deleted)."""
    queue = hub.subscribe(job_id)
    try:
        job = snapshot()
        if job is None:
            return
        yield format_event("status", {"status": job["status"], "attempt": job["attempts"]})
        if job["progress"]["phase"] is not None:
            yield format_event("progress", job["progress"])
        if job["finished"] is not None:
            yield format_event("end", job)
            return
        idle = 0.0
        while True:
            try:
                name, data = await asyncio.wait_for(queue.get(), timeout=POLL_SECONDS)
            except asyncio.TimeoutError:
                if stopping() or await disconnected():
                    return
                idle += POLL_SECONDS
                if idle >= KEEPALIVE_SECONDS:
                    idle = 0.0
                    yield ": keep-alive\n\n"
                continue
            idle = 0.0
            if name == "progress":  # only the newest progress of a burst is worth sending
                while not queue.empty():
                    following = queue.get_nowait()
                    if following[0] != "progress":
                        yield format_event(name, data)
                        name, data = following
                        break
                    data = following[1]
            if name == "end":
                view = snapshot()
                yield format_event("end", view if view is not None else data)
                return
            yield format_event(name, data)
    finally:
        hub.unsubscribe(job_id, queue)
