"""Inside a serve worker, the tasks besides a lip-sync job: prepare an avatar, an avatar job, a live session.

Each uses the live library's own pieces on the worker's loaded session: an avatar is
:func:`~wav2lip_trt.live.avatar.make_avatar` (the function behind ``wav2lip-trt avatar``), an avatar
job is ``wav2lip-trt stream --avatar DIR --audio FILE --outfile X`` (the file fed in 200 ms chunks
into :meth:`Session.stream <wav2lip_trt.session.Session.stream>`, frames into the same
:class:`~wav2lip_trt.live.sinks.FileSink`, with that command's defaults), and a live session is a
:class:`~wav2lip_trt.live.stream.LiveStream` fed from the pool's pipe, its frames sent back as JPEG
(the protocol is :mod:`.channel`'s).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import numpy as np

from ..audio import SAMPLE_RATE
from ..errors import AudioError, InputError, Wav2LipTrtError
from .tasks import LIVE_DEFAULTS, STREAM_DEFAULTS, AvatarTask, LiveTask, StreamTask

if TYPE_CHECKING:
    from ..session import Session

log = logging.getLogger(__name__)

CANCEL_SIGNAL = signal.SIGUSR1  # the pool's cancel: a job's (worker.py) or a live session's (here)
CHUNK_SECONDS = 0.2  # `stream --chunk-ms`'s default (the frames do not depend on it)
AVATAR_PHASE = "preparing the avatar"
MAX_RATE = 768000

Send = Callable[[tuple[Any, ...]], None]


def prepare_avatar_task(session: Session, task: AvatarTask, on_phase: Callable[[str], None]) -> dict[str, Any]:
    """``wav2lip-trt avatar``'s work on this session; the avatar's summary as the task's report."""
    from ..live.avatar import make_avatar

    started = time.perf_counter()
    on_phase(AVATAR_PHASE)
    avatar = make_avatar(session, task.options, task.out, loop=task.loop)
    return {**avatar_summary(avatar), "seconds": round(time.perf_counter() - started, 3)}


def avatar_summary(avatar: Any) -> dict[str, Any]:
    """What a client is told of a prepared avatar."""
    return {"frames": int(avatar.frames.shape[0]), "positions": len(avatar), "width": avatar.width,
            "height": avatar.height, "fps": avatar.fps, "loop": avatar.loop, "detection": avatar.manifest["detection"]}


def stream_job(session: Session, task: StreamTask, on_phase: Callable[[str], None], on_start: Callable[[int], None],
               on_frame: Callable[[int], None]) -> dict[str, Any]:
    """The offline stream of an avatar with an audio file into ``task.outfile`` (written when complete)."""
    from ..audio import load_audio
    from ..encoders import choose_encoder
    from ..ffmpeg import find_ffmpeg
    from ..live.avatar import load_avatar
    from ..live.runner import _produce
    from ..live.sinks import FileSink
    from ..live.sources import file_chunks
    from ..progress import LIP_SYNC_PHASE

    settings = {**STREAM_DEFAULTS, **task.settings}
    started = time.perf_counter()
    avatar = load_avatar(task.avatar, verify=False)
    wav = load_audio(task.audio)
    ffmpeg = find_ffmpeg(None)
    sink = FileSink(task.outfile, width=avatar.width, height=avatar.height, fps=avatar.fps, audio=task.audio,
                    record=False, ffmpeg=ffmpeg, encoder=choose_encoder(settings["encoder"], ffmpeg),
                    crf=settings["crf"], preset=settings["preset"])
    on_phase(LIP_SYNC_PHASE)
    failure: list[BaseException] = []
    total: int | None = None
    with sink, session.stream(avatar, reference_batch=settings["wav2lip_batch_size"], blend=settings["blend"]) as live:
        producer = threading.Thread(target=_produce, args=(live, file_chunks(wav, CHUNK_SECONDS), failure),
                                    daemon=True, name="wav2lip-trt-serve-stream-source")
        producer.start()
        for frame in live.frames():
            sink.write(frame.image)
            if total is None and live.total is not None:
                total = live.total
                on_start(total)
            on_frame(frame.index + 1)
        producer.join()
        if failure:
            raise failure[0]
    return {"clock": "audio", "policy": "block", "width": avatar.width, "height": avatar.height, "fps": avatar.fps,
            **live.stats.report(), "total_seconds": round(time.perf_counter() - started, 3)}


class PcmDecoder:
    """Raw s16le mono bytes in pieces of any length, as the stream's samples at 16 kHz (x / 32768, as files are read;
    another rate through soxr's streaming resampler, as ``stream --audio -`` does)."""

    def __init__(self, rate: int) -> None:
        if not isinstance(rate, int) or not 0 < rate <= MAX_RATE:
            raise InputError(f"rate must be a sample rate in Hz, 1..{MAX_RATE}, got {rate}")
        self.rate = rate
        self._left = b""
        self._resampler = None
        if rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def decode(self, data: bytes) -> np.ndarray:
        data = self._left + data
        usable = len(data) - len(data) % 2
        self._left = data[usable:]
        samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.int16)
        if self._resampler is None:
            return samples  # the stream reads int16 as x / 32768
        mono = samples.astype(np.float32) * np.float32(1.0 / 32768.0)
        return np.ascontiguousarray(self._resampler.resample_chunk(mono, last=False), dtype=np.float32)

    def finish(self) -> np.ndarray:
        if self._left:
            raise AudioError("the live audio ended inside a sample: send whole 16-bit samples (s16le, 2 bytes each)")
        if self._resampler is None:
            return np.zeros(0, dtype=np.int16)
        return np.ascontiguousarray(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True), dtype=np.float32)


def run_live(session: Session, live_id: str, task: LiveTask, conn: Connection, send: Send) -> tuple[Any, ...]:
    """A live session on this worker until the audio ends or the server aborts it; its ending message."""
    from ..live.avatar import load_avatar

    settings = {**LIVE_DEFAULTS, **task.settings}
    policy = settings["policy"] or ("block" if settings["clock"] == "audio" else "drop")
    try:
        decoder = PcmDecoder(settings["rate"])
        avatar = load_avatar(task.avatar, verify=False)
        live = session.stream(avatar, clock=settings["clock"], policy=policy, queue_frames=settings["queue_frames"],
                              max_batch=settings["max_batch"], delay=settings["delay"])
    except Wav2LipTrtError as exc:
        return ("failed", live_id, str(exc), "user")
    except Exception as exc:
        return _internal(live_id, exc)
    failure: list[BaseException] = []
    aborted = closed = False
    abort = _AbortSignal()
    with live, abort:
        send(("live-ready", live_id, {"fps": avatar.fps, "width": avatar.width, "height": avatar.height}))
        sender = threading.Thread(target=_send_frames, args=(live, live_id, send, settings["jpeg_quality"], failure),
                                  daemon=True, name="wav2lip-trt-serve-live-frames")
        sender.start()
        try:
            while sender.is_alive():  # it ends after the last frame, or on the stream's error
                if abort.asked:
                    aborted = True
                    break
                if not conn.poll(0.1):
                    continue
                message = conn.recv()
                if message[0] == "abort":
                    aborted = True
                    break
                if closed:
                    continue
                if message[0] == "pcm":
                    abort.feed(live, decoder.decode(message[1]))
                elif message[0] == "close":
                    tail = decoder.finish()
                    if tail.shape[0]:
                        abort.feed(live, tail)
                    live.close()
                    closed = True
        except _Aborted:
            aborted = True
        except Exception as exc:  # the stream's error (raised by feed), or the audio's
            failure.append(exc)
        if aborted or failure:
            live.abort()
    sender.join()
    if aborted:
        return ("cancelled", live_id)
    if failure:
        exc = failure[0]
        if isinstance(exc, Wav2LipTrtError):
            return ("failed", live_id, str(exc), "user")
        return _internal(live_id, exc)
    report = {"clock": settings["clock"], "policy": policy, "width": avatar.width, "height": avatar.height,
              "fps": avatar.fps, **live.stats.report()}
    return ("live-end", live_id, report)


class _Aborted(Exception):
    pass


class _AbortSignal:
    """The pool's cancel signal during a live session: the server aborts it. The in-band ``abort`` may sit
    behind seconds of PCM in the pipe, and a feed may be blocked (back-pressure): the signal ends a
    blocked feed at once, and the session stops before it reads on (what follows is dropped up to the
    server's ``release``). Never raised inside a pipe read, which would leave half a message behind."""

    def __init__(self) -> None:
        self.asked = False
        self._feeding = False
        self._previous: Any = None

    def __enter__(self) -> "_AbortSignal":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(CANCEL_SIGNAL, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(CANCEL_SIGNAL, self._previous)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.asked = True
        if self._feeding:
            raise _Aborted()

    def feed(self, live: Any, samples: np.ndarray) -> None:
        self._feeding = True
        try:
            if self.asked:
                raise _Aborted()
            live.feed(samples)
        finally:
            self._feeding = False


def _send_frames(live: Any, live_id: str, send: Send, quality: int, failure: list[BaseException]) -> None:
    import cv2

    try:
        for frame in live.frames():
            ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
            if not ok:
                raise RuntimeError(f"frame {frame.index}: JPEG encoding failed")
            send(("live-frame", live_id, {"index": frame.index, "pts": frame.pts}, jpeg.tobytes()))
    except BaseException as exc:  # the main loop sees the thread end and reports it
        failure.append(exc)


def wait_release(conn: Connection) -> bool:
    """After a live session's ending message: drop what was in flight up to the server's ``release``.
    False when the server's end is gone."""
    try:
        while conn.recv()[0] != "release":
            pass
    except (EOFError, OSError):
        return False
    return True


def _internal(live_id: str, exc: BaseException) -> tuple[Any, ...]:
    log.error("live session %s failed with an internal error", live_id, exc_info=exc)
    return ("failed", live_id, f"internal error: {type(exc).__name__}: {exc} (a bug; the traceback is in the server's "
                               "log)", "internal")
