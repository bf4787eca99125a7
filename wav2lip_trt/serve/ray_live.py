"""The app's end of a live session on Ray: what :class:`~.channel.LiveChannel` expects of a worker's pipe and process.

A :class:`LiveCall` is handed to the same :class:`~.channel.LiveChannel` the local pool uses (so the
latency marks, the ending and the abort are that class's), as both its pipe and its process. What
the channel writes down the pipe goes into the session's inbox in the :class:`~.ray_worker.Mailbox`
(``feed`` waits while the inbox is full; an abort goes ahead of the PCM still waiting); what it
reads comes from the streaming call to :meth:`.ray_worker.SessionWorker.live`, through a queue of
:data:`FRAMES_AHEAD` messages, and each frame read is reported taken, so the worker holds frames
back once it is :data:`~.ray_worker.LIVE_WINDOW` ahead of the app. "Killing the process" cuts the
call off.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ..jobs.ray_runner import _first_line
from .tasks import LiveTask

FRAMES_AHEAD = 8  # messages read from the call and not yet taken by the channel
PUT_RETRY_SECONDS = 0.02  # the inbox is full: try again after this long


class LiveCall:
    """One live session's streaming call to a worker replica, as a pipe (send, poll, recv, close) and a process
    (cancel, kill)."""

    def __init__(self, start: Callable[[Any], Any], mailbox: Any, key: str,
                 on_close: Callable[[LiveCall], None]) -> None:
        self.start, self.mailbox, self.key, self.on_close = start, mailbox, key, on_close
        self.response: Any = None
        self.channel: Any = None  # the LiveChannel this is the pipe of
        self.messages: queue.Queue[tuple[Any, ...] | None] = queue.Queue(FRAMES_AHEAD)
        self.ahead: tuple[Any, ...] | None = None
        self.failure: str | None = None  # why the call ended without its ending message
        self.frames = 0
        self.closed = False

    # ---- the pipe, as the channel writes it ----------------------------------------------------------

    def send(self, message: tuple[Any, ...]) -> None:
        import ray

        if isinstance(message[-1], LiveTask):  # (live id, task): the session starts
            self.response = self.start(message[1])
            threading.Thread(target=self._read, name=f"wav2lip-trt-ray-live-{self.key}", daemon=True).start()
            return
        if message[0] == "release":
            return  # nothing to clear: the call ends with the session
        while not ray.get(self.mailbox.put.remote(self.key, message)):
            if self.failure is not None or self.closed:
                raise OSError(self.failure or "the live session's call ended")
            time.sleep(PUT_RETRY_SECONDS)

    # ---- the pipe, as the channel reads it -----------------------------------------------------------

    def poll(self, timeout: float) -> bool:
        if self.ahead is None:
            try:
                self.ahead = self.messages.get(timeout=timeout)
            except queue.Empty:
                return False
        return True

    def recv(self) -> tuple[Any, ...]:
        if not self.poll(1e9):
            raise EOFError
        message, self.ahead = self.ahead, None
        if message is None:  # the call broke off
            raise EOFError(self.failure)
        if message[0] == "live-frame":
            self.frames += 1
            self.mailbox.took.remote(self.key, self.frames)
        return message

    def _read(self) -> None:
        try:
            for message in self.response:
                while not self.closed:
                    try:
                        self.messages.put(message, timeout=1.0)
                        break
                    except queue.Full:
                        continue
            return
        except Exception as exc:  # its worker died, the call was cut off (kill, close), or a bug in the worker
            self.failure = _first_line(exc)
        if not self.closed and self.channel is not None:
            self.channel.worker_died(self.failure)
        self.messages.put(None)

    # ---- the process -------------------------------------------------------------------------------

    def cancel(self) -> None:
        """The channel's abort, ahead of the PCM still waiting for the worker (the local pool signals the process)."""
        self.mailbox.put.remote(self.key, ("abort",))

    def kill(self) -> None:
        if self.response is not None:
            self.response.cancel()

    def close(self) -> None:
        """The session ended (the channel released it): the call is cut off if it still runs, the inbox goes."""
        if self.closed:
            return
        self.closed = True
        self.kill()
        self.mailbox.forget.remote(self.key)
        self.on_close(self)
