"""A live stream: audio fed in chunks, lip-synced frames of an avatar out as soon as their audio is final.

    with session.stream(avatar) as live:          # a worker thread runs the generator
        live.feed(pcm)                            # any size, float32 (or int16) at 16 kHz; returns at once
        ...
        live.close()                              # the end: the last frames follow
    for frame in live: frame.index, frame.image, frame.pts

Three buffers, all bounded: the mel stream (:class:`~wav2lip_trt.live.mel.StreamingMel`, a few
kilobytes), frames whose window is final but not yet generated (``pending``), and finished frames
the consumer has not taken (``queue_frames``). ``policy="block"`` makes :meth:`LiveStream.feed`
wait while either is full (back-pressure up to the audio source); ``policy="drop"`` drops the
oldest pending frame (never generated) or the oldest finished frame instead, and counts both.

The generator takes what is pending, up to ``max_batch`` frames: one or two when the stream has
caught up (latency), many when it is behind (throughput). It is the session's
(:class:`~wav2lip_trt.session.SharedGenerator`: several streams may share a session), warmed up at
the session's batch before the first stream's worker starts (:meth:`Session.warm_up`). Frames are
made by the pipeline's own stage (:meth:`wav2lip_trt.frame_ops.FrameOps.lip_sync`), so with the
torch CPU runner they equal ``infer``'s bit for bit: every batch size from two up gives the same
bits, so a lone frame runs beside a copy of itself, except where ``infer``'s own batch holds one
frame (the last frame when the frame count is 1 more than a multiple of ``--wav2lip_batch_size``),
known once the stream closes.

Clocks: ``audio`` makes one frame per window of received audio, whenever it arrives (exact).
``wall`` hands frame i out at ``start + delay + i / fps`` whatever arrives: when the audio for a
frame is late, silence is inserted into the stream (the avatar keeps moving) and the gap is
recorded (one pause, one gap, with its length); audio arriving after it follows the silence. Under
``policy="block"`` no silence is added while ``pending`` is full, so memory stays bounded when the
generator or the consumer is behind the clock. ``delay`` must cover the window's look-ahead
(0.25 s), the source's chunk length and a generator batch: 0.8 s suits 200 ms chunks on a GPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..audio import SAMPLE_RATE
from ..errors import InputError
from ..stages import StageTimes
from .avatar import Avatar
from .mel import StreamingMel, samples_for_frame
from .stats import LATENCY_KEPT, RECENT_KEPT, StreamStats  # noqa: F401  (their home was here)

if TYPE_CHECKING:
    import torch

    from ..execution import DeviceContext, PinnedSlab
    from ..scoring.online import OnlineScorer
    from ..session import Session

log = logging.getLogger(__name__)

CLOCKS = ("audio", "wall")
POLICIES = ("block", "drop")


@dataclass(frozen=True)
class LiveFrame:
    index: int  # output frame number (= mel window number)
    image: np.ndarray  # (H, W, 3) uint8 BGR
    pts: float  # seconds on the stream's audio timeline (index / fps)


@dataclass(frozen=True)
class ScoreOptions:
    """What :meth:`Session._scorer` reads to build a scorer (``infer --score``'s three options)."""

    expert_checkpoint: Path | None
    disc_checkpoint: Path | None = None
    score_every: int = 1


@dataclass
class _Pending:
    index: int
    window: np.ndarray
    chunk: int  # which feed made it final


class _Windows:
    """One batch's mel windows where the frame ops expect a whole file's chunks (index = row of the batch)."""

    def __init__(self, windows: Sequence[np.ndarray]) -> None:
        self.windows = np.stack(windows)
        self.mel = np.ascontiguousarray(self.windows.transpose(1, 0, 2).reshape(self.windows.shape[1], -1))

    def starts(self) -> np.ndarray:
        return np.arange(self.windows.shape[0], dtype=np.int64) * self.windows.shape[2]

    def gather(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.windows[np.asarray(indices, dtype=np.intp)]


_END = object()


class LiveStream:
    """See the module docstring. Use as a context manager (or call :meth:`abort`) so the worker always stops."""

    def __init__(self, session: Session, avatar: Avatar, *, clock: str = "audio", policy: str = "block",
                 queue_frames: int = 32, max_batch: int = 16, reference_batch: int = 128, blend: str = "none",
                 delay: float = 0.8, pending_frames: int | None = None,
                 on_samples: Callable[[np.ndarray], None] | None = None, scorer: OnlineScorer | None = None) -> None:
        if not (delay >= 0 and delay < 3600):
            raise InputError(f"--delay must be 0 or more seconds, got {delay}")
        if clock not in CLOCKS:
            raise InputError(f"--clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
        if policy not in POLICIES:
            raise InputError(f"--policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        for label, value in (("--queue-frames", queue_frames), ("--max-batch", max_batch),
                             ("--wav2lip_batch_size", reference_batch)):
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{label} must be a positive whole number, got {value}")
        if blend not in ("none", "feather"):
            raise InputError("--blend must be none or feather")
        avatar.check_checkpoint(session.model_options["checkpoint_path"])
        session.warm_up(reference_batch)  # the generator's graph at the session's batch, not this stream's first
        self.session, self.avatar = session, avatar
        self.clock, self.policy, self.blend, self.delay = clock, policy, blend, float(delay)
        self.max_batch = max(2, max_batch)
        self.reference_batch = reference_batch
        self.queue_frames = queue_frames
        self.pending_frames = pending_frames if pending_frames is not None else 4 * self.max_batch
        self.fps = avatar.fps
        self.on_samples = on_samples  # sees every sample the mel sees (inserted silence included), in order
        self.scorer = scorer  # scores each batch's faces as infer --score does (Session.stream(score=...))
        self.stats = StreamStats()
        self.times = StageTimes()
        self._mel = StreamingMel(self.fps)
        self._cond = threading.Condition()
        self._pending: deque[_Pending] = deque()
        self._out: deque[object] = deque()
        self._chunks = 0  # feeds so far (chunk ids)
        self._chunk_fed: dict[int, float] = {}  # perf_counter of each feed whose frames are not all out yet
        self._chunk_left: dict[int, int] = {}  # frames of such a feed not yet handed out
        self._total: int | None = None  # frames of the whole stream, known on close
        self._closed = self._aborted = False
        self._error: BaseException | None = None
        self._t0: float | None = None
        self._ops = self._make_ops()
        self._staging = None if self._ops is None else _Staging(session.context, self.max_batch,
                                                                 (avatar.height, avatar.width, 3))
        self._worker = threading.Thread(target=self._work, name="wav2lip-trt-live", daemon=True)
        self._worker.start()
        self._pacer: threading.Thread | None = None
        self._gap_end = -1  # sample where the wall clock's latest inserted silence ends

    # --- producer side ---------------------------------------------------------------------------------

    def feed(self, pcm: np.ndarray) -> None:
        """Add mono samples at 16 kHz: float32 in [-1, 1], or int16 (read as x / 32768, as files are)."""
        samples = to_float32(pcm)
        with self._cond:
            self._raise_failure()
            if self._closed or self._aborted:
                raise InputError("this stream is closed; start a new one")
            if self._t0 is None:
                self._start_clock()
            self._add(samples)
            if self.policy == "block":
                while len(self._pending) > self.pending_frames and not self._aborted and self._error is None:
                    self._cond.wait(0.1)
                self._raise_failure()

    def close(self) -> None:
        """End of the audio: the remaining frames (with the end's padding and the last window) follow."""
        with self._cond:
            if self._closed:
                return
            self._raise_failure()
            fed = time.perf_counter()
            windows = self._mel.close()
            self._closed = True
            self._total = self._mel.frames_out
            self._queue(windows, self._next_chunk(), fed)
            self._cond.notify_all()

    def abort(self) -> None:
        """Stop now (Ctrl-C, a consumer that went away): the worker ends, pending frames are discarded."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()
        for thread in (self._worker, self._pacer):  # the worker ends after its current batch
            if thread is not None and thread is not threading.current_thread():
                thread.join()

    def __enter__(self) -> "LiveStream":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        self.abort()

    @property
    def total(self) -> int | None:
        """Frames of the whole stream, known once it is closed."""
        return self._total

    @property
    def final_frames(self) -> int:
        """Frames whose mel window is final so far (generated, pending or dropped)."""
        return self._mel.frames_out

    def _next_chunk(self) -> int:
        self._chunks += 1
        return self._chunks - 1

    def _add(self, samples: np.ndarray) -> None:
        fed = time.perf_counter()
        self.stats.samples += samples.shape[0]
        if self.on_samples is not None:
            self.on_samples(samples)
        self._queue(self._mel.feed(samples), self._next_chunk(), fed)

    def _queue(self, windows: list[tuple[int, np.ndarray]], chunk: int, fed: float) -> None:
        if windows:
            self._chunk_left[chunk] = len(windows)
            self._chunk_fed[chunk] = fed
        for index, window in windows:
            self._pending.append(_Pending(index, window, chunk))
        if self.policy == "drop":
            while len(self._pending) > self.pending_frames:
                self._forget(self._pending.popleft())
                self.stats.dropped_pending += 1
        self._cond.notify_all()

    def _forget(self, item: _Pending) -> None:
        left = self._chunk_left.get(item.chunk, 0) - 1
        self._chunk_left[item.chunk] = left
        if left <= 0:
            self._chunk_left.pop(item.chunk, None)
            self._chunk_fed.pop(item.chunk, None)

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    # --- wall clock ------------------------------------------------------------------------------------

    def _start_clock(self) -> None:
        self._t0 = time.perf_counter()
        if self.clock == "wall":
            self._pacer = threading.Thread(target=self._pace, name="wav2lip-trt-live-clock", daemon=True)
            self._pacer.start()

    def due(self, index: int) -> float:
        """perf_counter time frame ``index`` is handed out at on the wall clock."""
        assert self._t0 is not None
        return self._t0 + self.delay + index / self.fps

    def _pace(self) -> None:
        """Frame i's window must be final by its due time minus a generator batch: fill late audio with silence."""
        index = 0
        margin = min(self.delay / 2, 0.2)
        while True:
            wait = self.due(index) - margin - time.perf_counter()
            with self._cond:
                if wait > 0:
                    self._cond.wait(wait)
                if self._closed or self._aborted or self._error is not None:
                    return
                if time.perf_counter() < self.due(index) - margin:
                    continue
                missing = samples_for_frame(index, self.fps) - self._mel.received
                if missing > 0 and self.policy == "block" and len(self._pending) > self.pending_frames:
                    self._cond.wait(0.05)  # the generator is behind: no more silence until it catches up
                    continue
                if missing > 0:
                    at = self._mel.received
                    if at != self._gap_end:
                        log.info("audio late: silence inserted from %.3f s on", at / SAMPLE_RATE)
                    self.stats.add_gap(at, missing, continues=at == self._gap_end)
                    self._gap_end = at + missing
                    try:
                        self._add(np.zeros(missing, dtype=np.float32))
                    except BaseException as exc:  # handed to the consumer
                        self._error = exc
                        self._cond.notify_all()
                        return
                index = max(index + 1, self._mel.frames_out)

    # --- generator -------------------------------------------------------------------------------------

    def _make_ops(self):  # type: ignore[no-untyped-def]
        context = self.session.context
        if not context.is_cuda:
            return None  # a HostOps per batch: it holds nothing but the batch's windows
        from ..frame_ops import DeviceOps

        return DeviceOps(None, context, self.blend, batch_frames=self.max_batch + 1, buffers=3,  # type: ignore[arg-type]
                         size=(self.avatar.height, self.avatar.width))

    def _work(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closed and not self._aborted:
                        self._cond.wait()
                    if self._aborted or (self._closed and not self._pending):
                        break
                    take = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
                    total = self._total
                    self._cond.notify_all()
                for part in _split_lone(take, total, self.reference_batch):
                    if self._aborted:
                        break
                    images = self._lip_sync(part)
                    self._deliver(part, images)
        except BaseException as exc:  # handed to the consumer and the producer
            with self._cond:
                self._error = exc
        finally:
            if self._staging is not None:
                self._staging.close()
            close = getattr(self._ops, "close", None)
            if close is not None:
                close()  # the device path's readback ring
            with self._cond:
                self._out.append(_END)
                self._cond.notify_all()

    def _lip_sync(self, part: _Part) -> list[np.ndarray]:
        """The pipeline's own crop, generate and paste-back on one batch (a lone frame beside its copy)."""
        items = list(part) * (2 if len(part) == 1 and not part.alone else 1)
        boxes = [self.avatar.box(it.index) for it in items]
        windows = _Windows([it.window for it in items])
        frames: list[np.ndarray] | torch.Tensor
        if self._ops is None:
            from ..frame_ops import HostOps

            frames = [self.avatar.frame(it.index) for it in items]
            ops = HostOps(windows, self.blend)  # type: ignore[arg-type]
        else:
            assert self._staging is not None
            frames = self._staging.upload([self.avatar.picture(it.index) for it in items])
            ops = self._ops
            from ..execution.handoff import upload

            with ops.ctx.on_compute():
                ops.mel = upload(windows.mel, ops.device, ops.ctx.compute)
            ops.starts = windows.starts()
        runner = self.session.generator
        finished, pred = ops.lip_sync(runner, frames, boxes, list(range(len(items))), self.times,
                                      keep_pred=self.scorer is not None)
        faced = [k for k in range(len(part)) if boxes[k] is not None]
        if self.scorer is not None and faced:
            assert pred is not None
            with self.times.stage("score", len(faced)):
                self.scorer.add([part[k].index for k in faced], pred[: len(faced)], windows.gather(faced))
        try:
            host = finished.host_frames()
            images = [np.array(host[k]) for k in range(len(part))]
        finally:
            finished.release()
        self.stats.add_batch(len(part))
        return images

    def _deliver(self, part: list[_Pending], images: list[np.ndarray]) -> None:
        with self._cond:
            for item, image in zip(part, images):
                if self._aborted:
                    return
                if self.policy == "block":
                    while len(self._out) >= self.queue_frames and not self._aborted:
                        self._cond.wait(0.1)
                elif len(self._out) >= self.queue_frames:
                    old = self._out.popleft()
                    assert isinstance(old, tuple)
                    self._forget(old[0])
                    self.stats.dropped_finished += 1
                self._out.append((item, image))
                self._cond.notify_all()

    # --- consumer side ---------------------------------------------------------------------------------

    def frames(self, timeout: float | None = None) -> Iterator[LiveFrame]:
        """Finished frames in order until the stream ends; raises the worker's error. ``timeout``: seconds
        without a frame after which :class:`TimeoutError` is raised (None: wait for ever)."""
        while True:
            with self._cond:
                start = time.perf_counter()
                while not self._out:
                    left = None if timeout is None else timeout - (time.perf_counter() - start)
                    if left is not None and left <= 0:
                        raise TimeoutError(f"no frame for {timeout:g} s (is the audio still coming?)")
                    self._cond.wait(left if left is not None else 0.5)
                entry = self._out[0]
                if entry is _END:
                    self._raise_failure()
                    if self.stats.finished is None:
                        self.stats.finished = time.perf_counter()
                    return
                self._out.popleft()
                self._cond.notify_all()
            item, image = entry  # type: ignore[misc]
            if self.clock == "wall":
                wait = self.due(item.index) - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            with self._cond:
                now = time.perf_counter()
                self.stats.frames += 1
                left = self._chunk_left.get(item.chunk, 0) - 1
                if left <= 0:
                    self._chunk_left.pop(item.chunk, None)
                    fed = self._chunk_fed.pop(item.chunk, None)
                    if fed is not None:
                        self.stats.add_latency(now - fed)
                else:
                    self._chunk_left[item.chunk] = left
            yield LiveFrame(item.index, image, item.index / self.fps)

    def __iter__(self) -> Iterator[LiveFrame]:
        return self.frames()


class _Staging:
    """The device path's frame uploads through a pinned slab of the stream's own (exact size, unpinned when
    the stream ends), not torch's power-of-two pinned pool, which keeps a block of every size it was asked for.

    One batch at a time, on the compute stream: the slab is refilled only once the event recorded after
    the previous batch's copy has completed (it has by then: that batch was read back, after its
    paste-back, after this copy), and unpinned only after the last copy's event.
    """

    def __init__(self, context: DeviceContext, rows: int, frame_shape: tuple[int, int, int]) -> None:
        self.context, self.shape = context, (rows, *frame_shape)
        self.slab: PinnedSlab | None = None  # made at the first batch
        self.copied: torch.cuda.Event | None = None  # after the latest copy out of the slab

    def upload(self, pictures: list[np.ndarray]) -> torch.Tensor:
        """(B, H, W, 3) uint8 on the device, valid on the compute stream."""
        import torch

        from ..execution.handoff import PinnedSlab, stall

        if self.slab is None:
            self.slab = PinnedSlab(int(np.prod(self.shape)), pin=True)
        if self.copied is not None:
            self.copied.synchronize()
        host = self.slab.buffers(1, self.shape)[0][: len(pictures)]
        np.stack(pictures, out=host.numpy())
        with self.context.on_compute():
            stall(self.context.compute)  # gpu-check's race window: refilling the slab too early would show
            frames = host.to(self.context.device, non_blocking=True)
            self.copied = torch.cuda.Event(blocking=True)  # this thread waits on it: sleep, do not spin
            self.copied.record(self.context.compute)
        return frames

    def close(self) -> None:
        if self.copied is not None:
            self.copied.synchronize()
            self.copied = None
        if self.slab is not None:
            self.slab.close()
            self.slab = None


class _Part(list):
    """A batch of pending frames; ``alone`` marks infer's own one-frame batch."""

    alone = False


def _split_lone(take: list[_Pending], total: int | None, reference_batch: int) -> list[_Part]:
    """Batches to run: ``take`` as one, except that infer's one-frame batch (the last frame, when the
    frame count is one more than a multiple of the reference batch) runs by itself."""
    if total is not None and (total - 1) % reference_batch == 0 and take and take[-1].index == total - 1:
        parts = [_Part(take[:-1]), _Part(take[-1:])]
        parts[1].alone = True
        return [p for p in parts if p]
    return [_Part(take)]


def to_float32(pcm: np.ndarray) -> np.ndarray:
    """Mono samples as the whole-file path reads them: float32 as is, int16 as x / 32768 (exact)."""
    pcm = np.asarray(pcm)
    if pcm.ndim != 1:
        raise InputError(f"expected mono samples (a 1-D array), got shape {pcm.shape}")
    if pcm.dtype == np.float32:
        return pcm
    if pcm.dtype == np.int16:
        return pcm.astype(np.float32) * np.float32(1.0 / 32768.0)
    raise InputError(f"expected float32 or int16 samples, got {pcm.dtype}")


def run_stream(session: Session, avatar: Avatar, chunks: Iterable[np.ndarray], **options: object) -> list[LiveFrame]:
    """Feed every chunk from another thread, close, and collect the frames (tests and simple callers)."""
    out: list[LiveFrame] = []
    failure: list[BaseException] = []
    with LiveStream(session, avatar, **options) as live:  # type: ignore[arg-type]
        def produce() -> None:
            try:
                for chunk in chunks:
                    live.feed(chunk)
                live.close()
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)
                live.abort()

        producer = threading.Thread(target=produce, name="wav2lip-trt-live-feed", daemon=True)
        producer.start()
        out.extend(live.frames())
        producer.join()
    if failure:
        raise failure[0]
    return out
