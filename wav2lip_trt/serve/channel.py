"""The server's end of a live session: PCM to one worker over its pipe, JPEG frames back.

Bounded both ways without a buffer of its own: the pipe holds at most its kernel buffer each way.
A consumer that stops taking frames stops this end reading the pipe, the worker's frame sender
then blocks, its stream's queues fill, and (policy ``block``) its ``feed`` blocks, so the worker
stops reading PCM and :meth:`LiveChannel.feed` blocks in turn: the websocket stops being read and
TCP pushes back on the client. With policy ``drop`` the worker drops frames instead.

While a session runs, the channel is the only reader of its worker's pipe (the pool's dispatcher
leaves it alone) and the only writer. The worker ends with one message (``live-end``, ``failed``
or ``cancelled``) and then reads and discards everything up to ``release``, which the channel
sends last: whatever PCM was in flight is gone before the worker takes its next task. An abort is
the pool's cancel signal (it reaches a worker blocked in a feed, or with seconds of PCM still to
read) and an ``abort`` message, while the channel drains the frames the worker still sends.

``latency_ms`` of a frame: from the moment the channel was handed the PCM that made the frame's
audio window final (or the end of the audio) to the moment the frame is handed out.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from ..audio import SAMPLE_RATE
from ..errors import Wav2LipTrtError
from .worker_tasks import CANCEL_SIGNAL

ABORT_SECONDS = 60.0  # a worker that does not end a session this long after "abort" is killed (and replaced):
# it first finishes the generator batch it is in (up to 16 frames: seconds on a loaded CPU)
ENDINGS = ("live-end", "failed", "cancelled")
MAX_MARKS = 4096  # feeds remembered for latency (older ones are forgotten when frames are not taken)

log = logging.getLogger(__name__)

CLOSE_NORMAL, CLOSE_POLICY, CLOSE_INTERNAL, CLOSE_TRY_AGAIN = 1000, 1008, 1011, 1013


class LiveBusy(Wav2LipTrtError):
    """No worker is free for a live session (a live session never waits in the queue): close 1013."""

    code = CLOSE_TRY_AGAIN


class LiveFailed(Wav2LipTrtError):
    """A live session ended in an error; ``code`` is the websocket close code that says whose fault."""

    def __init__(self, message: str, code: int = CLOSE_INTERNAL) -> None:
        super().__init__(message)
        self.code = code


class LiveChannel:
    """One live session on one worker: :meth:`feed`, :meth:`close`, :meth:`frames`, :meth:`report`, :meth:`abort`.

    ``feed``/``close`` from one thread, ``frames`` from another; ``abort`` from any, any number of times.
    """

    def __init__(self, live_id: str, conn: Connection, process: Any, rate: int,
                 on_end: Callable[["LiveChannel"], None]) -> None:
        self.id, self.conn, self.process, self.rate = live_id, conn, process, rate
        self.info: dict[str, Any] | None = None  # fps, width, height: once the worker has the avatar
        self._on_end = on_end
        self._send_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._state = threading.Lock()
        self._abort_lock = threading.Lock()
        self._marks: deque[tuple[int, float]] = deque(maxlen=MAX_MARKS)  # (samples fed so far, monotonic time)
        self._samples = 0
        self._closed_at: float | None = None
        self._report: dict[str, Any] | None = None
        self._stopping = False  # abort was asked
        self._ended = False  # the worker's ending message came (or it died)
        self._released = False
        self._owns_conn = False  # the pool buried the worker and left its pipe to this channel
        self._died: str | None = None

    # ---- the producer's side ----------------------------------------------------------------------

    def start(self, task: Any) -> None:
        self._send((self.id, task))

    def feed(self, pcm: bytes) -> None:
        """Raw s16le mono PCM at the session's rate; blocks while the worker is behind (back-pressure)."""
        if self._closed_at is not None:
            raise LiveFailed("audio after the end of the audio ({\"type\": \"close\"})", CLOSE_POLICY)
        self._check_open()
        with self._send_lock:
            self._samples += len(pcm) // 2
            self._marks.append((self._samples, time.monotonic()))
            self._send_locked(("pcm", bytes(pcm)))

    def close(self) -> None:
        """The end of the audio: the remaining frames follow, then the end."""
        if self._closed_at is not None:
            return
        self._check_open()
        with self._send_lock:
            self._closed_at = time.monotonic()
            self._send_locked(("close",))

    def _check_open(self) -> None:
        if self._ended or self._stopping:
            raise LiveFailed("this live session has ended", CLOSE_POLICY)

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._send_locked(message)

    def _send_locked(self, message: tuple[Any, ...]) -> None:
        try:
            self.conn.send(message)
        except (OSError, ValueError):
            raise LiveFailed(self._death()) from None

    # ---- the consumer's side ----------------------------------------------------------------------

    def frames(self, timeout: float | None = None) -> Iterator[tuple[dict[str, Any], bytes]]:
        """``(header, jpeg)`` per frame until the end; :class:`LiveFailed` on an error or an abort,
        :class:`TimeoutError` after ``timeout`` seconds without a message."""
        while True:
            message = self._next(timeout)
            kind = message[0]
            if kind == "live-ready":
                self.info = message[2]
            elif kind == "live-frame":
                header = dict(message[2])
                header["latency_ms"] = self._latency(header["index"])
                yield header, message[3]
            else:
                self._end(message)
                return

    def report(self) -> dict[str, Any]:
        """The stream's report (as ``stream --json``), once :meth:`frames` has ended."""
        if self._report is None:
            raise LiveFailed("the live session has not ended yet", CLOSE_INTERNAL)
        return self._report

    def _next(self, timeout: float | None) -> tuple[Any, ...]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._read_lock:
                if self._stopping or self._ended:
                    raise LiveFailed("the live session was stopped", CLOSE_NORMAL)
                try:
                    if self.conn.poll(0.1):
                        return self.conn.recv()
                except (EOFError, OSError):
                    self._ended = True
                    self._release()
                    raise LiveFailed(self._death()) from None
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no frame for {timeout:g} s")

    def _end(self, message: tuple[Any, ...]) -> None:
        self._ended = True
        self._release()
        if message[0] == "live-end":
            self._report = message[2]
        elif message[0] == "failed":
            raise LiveFailed(message[2], CLOSE_POLICY if message[3] == "user" else CLOSE_INTERNAL)
        else:
            raise LiveFailed("the live session was stopped", CLOSE_NORMAL)

    def _latency(self, index: int) -> float | None:
        from ..live.mel import samples_for_frame

        if self.info is None:
            return None
        need = math.ceil(samples_for_frame(index, float(self.info["fps"])) * self.rate / SAMPLE_RATE)
        marks = self._marks  # feed() appends meanwhile: deque appends and pops are atomic
        while marks and marks[0][0] < need:
            if len(marks) == 1 and self._closed_at is None:
                break  # the newest feed is the best guess (wall clock: silence made the frame)
            marks.popleft()
        if marks and marks[0][0] >= need:
            fed = marks[0][1]
        elif self._closed_at is not None:
            fed = self._closed_at
        elif marks:
            fed = marks[-1][1]
        else:
            return None
        return round((time.monotonic() - fed) * 1000, 1)

    # ---- ending -----------------------------------------------------------------------------------

    def abort(self) -> None:
        """Stop now (the client went away, the server stops): the worker drops what it has and is free
        again, or is killed (and replaced) when it does not stop within ``ABORT_SECONDS``."""
        with self._abort_lock:
            if self._released:
                return
            self._stopping = True
            with self._read_lock:  # frames() is out of the pipe
                if self._released:
                    return
                if not self._ended and self._died is None:
                    if hasattr(self.process, "cancel"):  # serve --ray's call (ray_live.LiveCall): no process
                        self.process.cancel()
                    else:
                        try:  # at once, even when the worker is blocked feeding or has seconds of PCM to read first
                            os.kill(self.process.pid, CANCEL_SIGNAL)
                        except ProcessLookupError:
                            pass
                    sender = threading.Thread(target=self._send_quietly, args=(("abort",),), daemon=True,
                                              name=f"wav2lip-trt-live-abort-{self.id}")
                    sender.start()
                    if not self._drain(ABORT_SECONDS):
                        log.warning("live session %s: its worker did not stop within %g s of the abort; killed "
                                    "(a new one takes its place)", self.id, ABORT_SECONDS)
                        self._died = "killed: it did not stop the session"
                        self.process.kill()
                    sender.join(ABORT_SECONDS)
                self._ended = True
            self._release()

    def _send_quietly(self, message: tuple[Any, ...]) -> None:
        try:
            self._send(message)
        except LiveFailed:
            pass

    def _drain(self, seconds: float) -> bool:
        """Read and drop messages until the worker's ending one; False if it does not come in time."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if self.conn.poll(0.1) and self.conn.recv()[0] in ENDINGS:
                    return True
            except (EOFError, OSError):
                return False
        return False

    def worker_died(self, how: str) -> None:
        """From the pool: the worker is gone (it was buried); its pipe is this channel's to close."""
        with self._state:
            self._died = how
            self._owns_conn = True
            released = self._released
        if released:
            self.conn.close()

    def _death(self) -> str:
        how = self._died or "its pipe closed"
        return f"the live session's worker died ({how})"

    def _release(self) -> None:
        with self._state:
            if self._released:
                return
            self._released = True
            died = self._died
        if died is None:
            self._send_quietly(("release",))
        with self._state:
            owns = self._owns_conn
        if owns:
            self.conn.close()
        self._on_end(self)
