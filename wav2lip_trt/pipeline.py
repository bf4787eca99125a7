"""The lip-sync pipeline as a chain of generators, streaming from decode to encode.

    audio -> mel -> chunks (N output frames)
    face source -> frames -> S3FD in batches -> pads -> forward smoothing (4-frame look-ahead)
        -> (frame, box) per output frame, looping the video when the audio is longer
        -> 96x96 crops + mel -> Wav2Lip in batches -> paste-back -> writer thread -> ffmpeg

Frames in flight are bounded by bytes (``--frame-memory``): the decoder's look-ahead, one
generator batch and the encoder's queue (see :mod:`wav2lip_trt.execution` for the threads, CUDA
streams and hand-offs), so memory depends neither on the video's length nor, beyond the budget,
on its resolution (the reference keeps every frame).
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .audio import MelChunks
from .boxes import pad_box, smooth_stream
from .dump import IntermediateDump
from .errors import InputError, NoFaceError
from .execution import FinishedBatch
from .execution.budget import chunk_sizes
from .faces import IMG_SIZE, Box
from .frame_ops import Frame, FrameOps
from .options import InferenceOptions
from .runners.base import WAV2LIP_INPUTS, Runner
from .stages import StageTimes
from .video import FaceSource

if TYPE_CHECKING:
    from .scoring.online import OnlineScorer

log = logging.getLogger(__name__)

_NO_BOX = np.full(4, -1, dtype=np.int64)


@dataclass
class FaceItem:
    """One output frame on its way through the pipeline."""

    index: int  # output frame index = mel chunk index
    source_index: int  # input frame it shows
    frame: Frame  # (H, W, 3) uint8 BGR, private to this item (paste-back writes into it); a NumPy
    # array on the host path, a device tensor on the GPU path
    box: Box | None  # (y1, y2, x1, x2); None = no face, the frame passes through unchanged


class Detection:
    """Raw boxes (from :mod:`wav2lip_trt.detection.stage`) turned into the boxes the original uses:
    pads, the missing-face policy, forward smoothing, over a frame stream."""

    def __init__(self, raw: Sequence[tuple[int, int, int, int] | None], options: InferenceOptions, source: FaceSource) -> None:
        self.raw_boxes, self.options, self.source = list(raw), options, source
        if options.on_missing_face == "error" and None in self.raw_boxes:
            raise self._no_face(self.raw_boxes.index(None), "no face detected")

    def raw(self, frames: Iterable[Frame]) -> Iterator[tuple[int, Frame, tuple[int, int, int, int] | None]]:
        """(source index, frame, raw x1, y1, x2, y2 or None) in input order."""
        for index, frame in enumerate(frames):
            if index >= len(self.raw_boxes):
                raise InputError(f"{self.options.boxes or self.source.path}: no box for frame {index} (there are "
                                 f"{len(self.raw_boxes)}); the face input has more frames than boxes")
            yield index, frame, self.raw_boxes[index]

    def usable(self, frames: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """(source index, frame, padded [x1, y1, x2, y2] or None) with the missing-face policy applied."""
        height, width = self.source.info.height, self.source.info.width
        previous = None
        for index, frame, det in self.raw(frames):
            if det is None:
                if self.options.on_missing_face == "error":
                    raise self._no_face(index, "no face detected")
                yield index, frame, (previous if self.options.on_missing_face == "previous" else None)
                continue
            previous = pad_box(det, self.options.pads, height, width)
            yield index, frame, previous

    def boxes(self, frames: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray, Box | None]]:
        """(source index, frame, padded and smoothed (y1, y2, x1, x2) or None), in input order.

        A padded box can be empty (S3FD may place a box beyond the frame edge) and smoothing can
        repair it, as in the original; a box still empty after smoothing, where the original
        crashes inside OpenCV, follows the missing-face policy.
        """
        order: deque[list] = deque()
        previous: list[Box | None] = [None]

        def rows() -> Iterator[tuple[list, np.ndarray]]:
            for index, frame, row in self.usable(frames):
                entry = [index, frame, None, row is None]
                order.append(entry)
                if row is not None:
                    yield entry, row

        def ready() -> Iterator[tuple[int, np.ndarray, Box | None]]:
            while order and order[0][3]:
                index, frame, box, _ = order.popleft()
                if box is not None and (box[1] <= box[0] or box[3] <= box[2]):
                    if self.options.on_missing_face == "error":
                        raise self._no_face(index, f"the face box (y1, y2, x1, x2) = {box} lies outside the frame")
                    box = previous[0] if self.options.on_missing_face == "previous" else None
                if box is not None:
                    previous[0] = box
                yield index, frame, box

        stream = rows() if self.options.nosmooth else smooth_stream(rows())
        for entry, row in stream:
            x1, y1, x2, y2 = (int(v) for v in row)
            entry[2], entry[3] = (y1, y2, x1, x2), True
            yield from ready()
        yield from ready()

    def _no_face(self, index: int, what: str) -> NoFaceError:
        return NoFaceError(
            f"{self.source.path}: {what} in frame {index} (t={self.source.timestamp(index):.3f} s); check the "
            "video, adjust --pads, give a fixed --box, or pass --on-missing-face skip|previous"
        )


def face_items(
    source: FaceSource, count: int, options: InferenceOptions, detection: Detection | None, ops: FrameOps,
    times: StageTimes | None = None, decode_ahead: int | None = None,
) -> Iterator[FaceItem]:
    """One item per output frame: the reference's frame choice (looping, or frame 0 when static).

    Frames are decoded in a worker thread, ``decode_ahead`` frames (default: a detection batch)
    ahead of the consumer.
    """
    times = times if times is not None else StageTimes()
    ahead = decode_ahead if decode_ahead is not None else options.face_det_batch_size

    def decoded(limit: int) -> Iterator[Frame]:
        return ops.frames(limit, ahead, times)

    static = options.static or source.kind == "image"
    limit = 1 if static else count
    if options.uses_fixed_box:
        y1, y2, x1, x2 = options.box
        if y2 > source.info.height or x2 > source.info.width:
            raise InputError(
                f"--box {list(options.box)} reaches outside the {source.info.width}x{source.info.height} frames of {source.path}"
            )
        fixed: Box = (y1, y2, x1, x2)
        first = ((i, frame, fixed) for i, frame in enumerate(decoded(limit)))
    else:
        assert detection is not None
        first = detection.boxes(decoded(limit))

    seen: list[Box | None] = []
    frame0: Frame | None = None
    # Each pass over the video is closed when this generator stops, however it stops: its decode
    # thread must not outlive the run (an error's traceback can keep this generator alive).
    with contextlib.closing(first):
        for index, frame, box in first:
            seen.append(box)
            if static:
                frame0 = frame
                break
            yield FaceItem(index, index, frame, box)
    if static:
        assert frame0 is not None
        for i in range(count):
            yield FaceItem(i, 0, ops.copy(frame0), seen[0])
        return
    produced = len(seen)
    while produced < count:
        before = produced
        with contextlib.closing(decoded(min(len(seen), count - produced))) as again:
            for j, frame in enumerate(again):
                yield FaceItem(produced, j, frame, seen[j])
                produced += 1
        if produced == before:
            raise InputError(f"{source.path}: the video could not be read again from the start to loop it")


def generate(
    items: Iterable[FaceItem], ops: FrameOps, runner: Runner, batch_size: int, dump: IntermediateDump | None,
    times: StageTimes | None = None, chunks: MelChunks | None = None, *, reference_batch: int | None = None,
    total: int | None = None, scorer: OnlineScorer | None = None, on_frame: Callable[[int], None] | None = None,
) -> Iterator[FinishedBatch]:
    """Run Wav2Lip on batches of at most ``batch_size`` faces; yield the finished frames per batch.

    The original runs batches of ``reference_batch`` (``--wav2lip_batch_size``) faces; holding that
    many full frames is what the frame budget forbids, so each of its batches is cut into near-equal
    parts of at most ``batch_size``. Every part has at least two faces unless the original's batch
    had one (a lone face takes another CPU convolution path), which keeps the predictions
    bit-identical. ``total`` (output frames) tells where the original's last batch ends. A run of
    frames without a face is flushed at ``batch_size`` frames too. ``chunks`` is needed for
    ``dump`` (``mel_chunks.npy``) and ``scorer`` (the expert compares each face with its chunk).
    ``on_frame(done)`` is told, after every generator call, how many output frames have their
    faces generated: on the CPU a batch runs in chunks of 8 faces, and progress moves per chunk.
    """
    times = times if times is not None else StageTimes()
    counter = None if on_frame is None else _GeneratedFrames(on_frame)
    if counter is not None:
        runner = _CountingRunner(runner, counter.generated)
    reference_batch = reference_batch or batch_size
    parts: deque[int] = deque()
    pending: list[FaceItem] = []
    with_face = 0
    for item in items:
        if not parts:
            left = reference_batch if total is None else min(reference_batch, max(1, total - item.index))
            parts.extend(chunk_sizes(left, batch_size))
        pending.append(item)
        with_face += item.box is not None
        if with_face >= parts[0] or len(pending) >= max(batch_size, parts[0]):
            parts[0] -= with_face
            if parts[0] <= 0:
                parts.popleft()
            yield _generate_batch(pending, ops, runner, dump, times, chunks, scorer, counter)
            pending, with_face = [], 0
    if pending:
        yield _generate_batch(pending, ops, runner, dump, times, chunks, scorer, counter)


class _GeneratedFrames:
    """Counts output frames whose faces are generated, from the faces each generator call made.

    A batch's frames are in output order and its faces are generated in that order, so after
    ``n`` faces every frame up to the ``n``-th face's is done (a frame without a face needs none).
    """

    def __init__(self, on_frame: Callable[[int], None]) -> None:
        self.on_frame = on_frame
        self.ends: list[int] = []  # per face of the current batch: the output frames done once it is generated
        self.faces = 0

    def begin(self, items: list[FaceItem]) -> None:
        self.ends, self.faces = [it.index + 1 for it in items if it.box is not None], 0

    def generated(self, faces: int) -> None:
        self.faces += faces
        if self.ends:
            self.on_frame(self.ends[min(self.faces, len(self.ends)) - 1])

    def finish(self, items: list[FaceItem]) -> None:
        self.on_frame(items[-1].index + 1)


class _CountingRunner:
    """The generator runner, unchanged, saying how many faces each call made (padding aside: the
    counter stops at the batch's faces)."""

    def __init__(self, runner: Runner, generated: Callable[[int], None]) -> None:
        self._runner, self._generated = runner, generated

    def infer(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self._runner.infer(feed)
        self._generated(int(feed[WAV2LIP_INPUTS[0]].shape[0]))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


def _generate_batch(
    items: list[FaceItem], ops: FrameOps, runner: Runner, dump: IntermediateDump | None, times: StageTimes,
    chunks: MelChunks | None, scorer: OnlineScorer | None = None, counter: _GeneratedFrames | None = None,
) -> FinishedBatch:
    if counter is not None:
        counter.begin(items)
    finished, pred = ops.lip_sync(runner, [it.frame for it in items], [it.box for it in items],
                                  [it.index for it in items], times, keep_pred=dump is not None or scorer is not None)
    if counter is not None:
        counter.finish(items)
    faced = [it.index for it in items if it.box is not None]
    if scorer is not None and faced:
        assert chunks is not None and pred is not None
        with times.stage("score", len(faced)):
            scorer.add(faced, pred, chunks.gather(faced))
    if dump is not None:
        assert chunks is not None
        by_index = dict(zip(faced, ops.to_host(pred))) if pred is not None else {}
        nan = np.full((3, IMG_SIZE, IMG_SIZE), np.nan, dtype=np.float32)
        dump.append("mel_chunks", chunks.gather([it.index for it in items]))
        dump.append("boxes", np.array([it.box if it.box is not None else _NO_BOX for it in items], dtype=np.int64))
        dump.append("pred", np.stack([by_index.get(it.index, nan) for it in items]).astype(np.float32))
        dump.append("frames", np.stack(finished.host_frames()))
    return finished
