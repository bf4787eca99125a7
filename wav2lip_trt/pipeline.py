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

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import torch

from .audio import MelChunks, load_audio, melspectrogram
from .backends import RunnerRequest, create_runners, resolve_device
from .boxes import pad_box, smooth_stream
from .detect import FaceDetector
from .dump import IntermediateDump
from .encode import VideoWriter
from .encoders import choose_encoder
from .errors import AudioError, InputError, NoFaceError
from .execution import DeviceContext, FinishedBatch, WriterThread, plan_batches
from .execution.budget import chunk_sizes
from .execution.memory import bound_allocator
from .ffmpeg import find_ffmpeg
from .faces import IMG_SIZE, Box
from .frame_ops import Frame, FrameOps, frame_ops_for
from .options import InferenceOptions
from .runners.base import Runner
from .stages import StageTimes, prefetch, timed
from .video import FaceSource, FrameTransform

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


@dataclass(frozen=True)
class InferenceResult:
    outfile: Path
    frames: int
    fps: float
    width: int
    height: int
    audio_seconds: float
    device: str
    backend: str
    precision: str
    seconds: float
    stages: list[dict] = field(default_factory=list)  # per-stage busy time (StageTimes.rows())


def batched(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


class Detection:
    """S3FD over a frame stream: detect in batches, apply pads, the missing-face policy, smoothing."""

    def __init__(self, detector: FaceDetector, options: InferenceOptions, source: FaceSource, dump: IntermediateDump | None,
                 ops: FrameOps):
        self.detector, self.options, self.source, self.dump, self.ops = detector, options, source, dump, ops

    def raw(self, frames: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray, tuple[int, int, int, int] | None]]:
        """(source index, frame, chosen x1, y1, x2, y2 or None) in input order."""
        index = 0
        for batch in batched(frames, self.options.face_det_batch_size):
            found = self.detector.detect(self.ops.stack(batch))
            if self.dump is not None:
                self.dump.append("det_boxes", np.array([_NO_BOX if b is None else b for b in found], dtype=np.int64))
            for frame, det in zip(batch, found):
                yield index, frame, det
                index += 1

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
        return prefetch(timed(ops.frames(limit), times, "decode"), ahead, "decode")

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
    for index, frame, box in first:
        seen.append(box)
        if static:
            frame0 = frame
            first.close()
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
        for j, frame in enumerate(decoded(min(len(seen), count - produced))):
            yield FaceItem(produced, j, frame, seen[j])
            produced += 1
        if produced == before:
            raise InputError(f"{source.path}: the video could not be read again from the start to loop it")


def generate(
    items: Iterable[FaceItem], ops: FrameOps, runner: Runner, batch_size: int, dump: IntermediateDump | None,
    times: StageTimes | None = None, chunks: MelChunks | None = None, *, reference_batch: int | None = None,
    total: int | None = None,
) -> Iterator[FinishedBatch]:
    """Run Wav2Lip on batches of at most ``batch_size`` faces; yield the finished frames per batch.

    The original runs batches of ``reference_batch`` (``--wav2lip_batch_size``) faces; holding that
    many full frames is what the frame budget forbids, so each of its batches is cut into near-equal
    parts of at most ``batch_size``. Every part has at least two faces unless the original's batch
    had one (a lone face takes another CPU convolution path), which keeps the predictions
    bit-identical. ``total`` (output frames) tells where the original's last batch ends. A run of
    frames without a face is flushed at ``batch_size`` frames too. ``chunks`` is needed only for
    ``dump`` (``mel_chunks.npy``).
    """
    times = times if times is not None else StageTimes()
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
            yield _generate_batch(pending, ops, runner, dump, times, chunks)
            pending, with_face = [], 0
    if pending:
        yield _generate_batch(pending, ops, runner, dump, times, chunks)


def _generate_batch(
    items: list[FaceItem], ops: FrameOps, runner: Runner, dump: IntermediateDump | None, times: StageTimes,
    chunks: MelChunks | None,
) -> FinishedBatch:
    finished, pred = ops.lip_sync(runner, [it.frame for it in items], [it.box for it in items],
                                  [it.index for it in items], times, keep_pred=dump is not None)
    if dump is not None:
        assert chunks is not None
        faced = [it.index for it in items if it.box is not None]
        by_index = dict(zip(faced, pred.numpy())) if pred is not None else {}
        nan = np.full((3, IMG_SIZE, IMG_SIZE), np.nan, dtype=np.float32)
        dump.append("mel_chunks", chunks.gather([it.index for it in items]))
        dump.append("boxes", np.array([it.box if it.box is not None else _NO_BOX for it in items], dtype=np.int64))
        dump.append("pred", np.stack([by_index.get(it.index, nan) for it in items]).astype(np.float32))
        dump.append("frames", np.stack(finished.host_frames()))
    return finished


def run_inference(
    options: InferenceOptions, *, on_frame: Callable[[int], None] | None = None, on_start: Callable[[int], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> InferenceResult:
    """Lip-sync ``options.face`` to ``options.audio`` and write ``options.outfile``.

    ``on_phase(label)`` says what the run is doing (reading audio, loading models, detecting
    faces, lip-syncing); ``on_start(total_frames)`` and ``on_frame(frames_written)`` drive a
    progress bar (``on_frame`` is called from the writer thread, once per frame).
    """
    started = time.perf_counter()
    times = StageTimes()
    phase = on_phase if on_phase is not None else (lambda label: None)
    options.validate()
    options.check_face_source()
    bound_allocator()
    device = resolve_device(options.device)
    transform = FrameTransform(options.resize_factor, options.rotate, tuple(options.crop))
    source = FaceSource(options.face, fps=options.fps, transform=transform)
    if source.kind == "image" and not transform.is_identity:
        log.warning("--resize_factor/--rotate/--crop are ignored for a still image (as in the original)")
    info = source.info

    phase("reading audio")
    with times.stage("audio"):
        try:
            wav = load_audio(options.audio, ffmpeg=options.ffmpeg)
            audio_seconds = len(wav) / 16000
            mel = melspectrogram(wav)
            del wav  # 230 MB per hour of audio; only the mel (a third of that) is needed from here on
            chunks = MelChunks(mel, info.fps)
        except AudioError as exc:
            msg = str(exc)
            raise AudioError(msg if str(options.audio) in msg else f"{options.audio}: {msg}") from None
    total = len(chunks)
    times.add("audio", 0.0, total)
    log.info("%s: %s %dx%d at %.3f fps; %d output frames for %.2f s of audio",
             info.path, info.kind, info.width, info.height, info.fps, total, audio_seconds)
    plan = plan_batches(info.width, info.height, budget_mb=options.frame_memory,
                        wav2lip_batch_size=options.wav2lip_batch_size, face_det_batch_size=options.face_det_batch_size)
    log.info("frame memory %g MiB: %s", options.frame_memory, plan.describe())

    context = DeviceContext(device)
    request = RunnerRequest(
        checkpoint_path=options.checkpoint_path,
        s3fd_checkpoint=None if options.uses_fixed_box else options.s3fd_checkpoint,
        device=device, precision=options.precision, engines_dir=options.engines_dir, flavor=options.flavor,
        stream=context.compute, generator_batch=plan.generator_batch,
    )
    phase("loading models")
    with times.stage("load"):
        runners = create_runners(options.backend, request)
        _warm_up(runners.generator, plan.generator_batch, context)
    with runners:
        log.info("running %s %s on %s", runners.backend, runners.precision, runners.generator.device)
        dump = IntermediateDump(options.dump_intermediates) if options.dump_intermediates else None
        if options.save_frames is not None:
            Path(options.save_frames).mkdir(parents=True, exist_ok=True)
        try:
            if dump is not None:
                dump.save("mel", mel.astype(np.float32))
            ops = frame_ops_for(context, chunks, source, blend=options.blend, decoder=options.decoder,
                                batch=options.face_det_batch_size, batch_frames=plan.generator_batch,
                                buffers=plan.buffers)
            detection = None
            if runners.detector is not None:
                detection = Detection(FaceDetector(runners.detector, times, ops), options, source, dump, ops)
            items = face_items(source, total, options, detection, ops, times, plan.decode_ahead)
            batches = generate(items, ops, runners.generator, plan.generator_batch, dump, times, chunks,
                               reference_batch=options.wav2lip_batch_size, total=total)
            ffmpeg = find_ffmpeg(options.ffmpeg)
            phase("detecting faces" if detection is not None else "lip-syncing")
            if on_start is not None:
                on_start(total)
            with VideoWriter(
                options.outfile, width=info.width, height=info.height, fps=info.fps, audio=options.audio,
                ffmpeg=ffmpeg, crf=options.crf, encoder=choose_encoder(options.encoder, ffmpeg),
            ) as writer, WriterThread(
                writer, depth=plan.writer_batches, on_frame=on_frame, extra=_frame_saver(options.save_frames),
                busy=lambda seconds, frames: times.add("encode", seconds, frames),
            ) as frames_out:
                for n, batch in enumerate(batches):
                    if n == 0 and detection is not None:
                        phase("lip-syncing")
                    frames_out.put(batch)
        finally:
            if dump is not None:
                dump.close()
    return InferenceResult(
        outfile=Path(options.outfile), frames=total, fps=info.fps, width=info.width, height=info.height,
        audio_seconds=audio_seconds, device=str(runners.generator.device), backend=runners.backend,
        precision=runners.precision, seconds=time.perf_counter() - started, stages=times.rows(),
    )


def _warm_up(runner: Runner, batch: int, context: DeviceContext) -> None:
    """On a GPU, one generator batch before any worker thread starts.

    The torch runner captures its CUDA graph on its first batch; capturing here, while this thread
    is the only one using the GPU, means no other thread can enqueue work into the capture (the
    decoder's copy stream may even be the same pooled stream in a long-lived process). It also
    moves cuDNN's algorithm search and TensorRT's lazy set-up out of the first real batch.
    """
    if not context.is_cuda:
        return
    with context.on_compute():
        mel = torch.zeros((batch, 1, 80, 16), device=context.device)
        face = torch.zeros((batch, 6, IMG_SIZE, IMG_SIZE), device=context.device)
    runner.infer({"mel": mel, "face": face})


def _frame_saver(folder: Path | None) -> Callable[[int, np.ndarray], None] | None:
    if folder is None:
        return None

    def save(index: int, frame: np.ndarray) -> None:
        path = Path(folder) / f"frame_{index:06d}.png"
        if not cv2.imwrite(str(path), frame):
            raise InputError(f"--save-frames {folder}: cannot write {path.name}")

    return save
