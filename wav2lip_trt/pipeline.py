"""The lip-sync pipeline as a chain of generators, streaming from decode to encode.

    audio -> mel -> chunks (N output frames)
    face source -> frames -> S3FD in batches -> pads -> forward smoothing (4-frame look-ahead)
        -> (frame, box) per output frame, looping the video when the audio is longer
        -> 96x96 crops + mel -> Wav2Lip in batches -> paste-back -> ffmpeg (H.264 + audio)

Only a detection batch, the smoothing look-ahead and one generator batch of frames are alive at
once, so memory does not grow with the video's length (the reference keeps every frame).
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


def on_stream(items: Iterable[FaceItem], stream: "torch.cuda.Stream") -> Iterator[FaceItem]:
    """Produce each item with ``stream`` current in the producing thread (stream choice is per thread).

    Items carry host frames and boxes only, so nothing on this stream is read by another one.
    """
    it = iter(items)
    while True:
        with torch.cuda.stream(stream):
            try:
                item = next(it)
            except StopIteration:
                return
            stream.synchronize()
        yield item


def face_items(
    source: FaceSource, count: int, options: InferenceOptions, detection: Detection | None, ops: FrameOps,
    times: StageTimes | None = None,
) -> Iterator[FaceItem]:
    """One item per output frame: the reference's frame choice (looping, or frame 0 when static).

    Frames are decoded in a worker thread, a detection batch ahead of the detector.
    """
    times = times if times is not None else StageTimes()

    def decoded(limit: int) -> Iterator[Frame]:
        return prefetch(timed(ops.frames(limit), times, "decode"), options.face_det_batch_size, "decode")

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
    times: StageTimes | None = None, chunks: MelChunks | None = None,
) -> Iterator[FaceItem]:
    """Run Wav2Lip on batches of ``batch_size`` faces and paste the results into the frames.

    ``chunks`` is needed only for ``dump`` (``mel_chunks.npy``).
    """
    times = times if times is not None else StageTimes()
    pending: list[FaceItem] = []
    with_face = 0
    for item in items:
        pending.append(item)
        with_face += item.box is not None
        if with_face >= batch_size:
            yield from _generate_batch(pending, ops, runner, dump, times, chunks)
            pending, with_face = [], 0
    if pending:
        yield from _generate_batch(pending, ops, runner, dump, times, chunks)


def _generate_batch(
    items: list[FaceItem], ops: FrameOps, runner: Runner, dump: IntermediateDump | None, times: StageTimes,
    chunks: MelChunks | None,
) -> list[FaceItem]:
    faced = [it for it in items if it.box is not None]
    if faced:
        pred = ops.lip_sync(runner, [it.frame for it in faced], [it.box for it in faced],  # type: ignore[misc]
                            [it.index for it in faced], times)
    if dump is not None:
        assert chunks is not None
        by_index = dict(zip((it.index for it in faced), pred.numpy())) if faced else {}
        nan = np.full((3, IMG_SIZE, IMG_SIZE), np.nan, dtype=np.float32)
        dump.append("mel_chunks", chunks.gather([it.index for it in items]))
        dump.append("boxes", np.array([it.box if it.box is not None else _NO_BOX for it in items], dtype=np.int64))
        dump.append("pred", np.stack([by_index.get(it.index, nan) for it in items]).astype(np.float32))
        dump.append("frames", np.stack([ops.to_host(it.frame) for it in items]))
    return items


def run_inference(
    options: InferenceOptions, *, on_frame: Callable[[int], None] | None = None, on_start: Callable[[int], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> InferenceResult:
    """Lip-sync ``options.face`` to ``options.audio`` and write ``options.outfile``.

    ``on_start(total_frames)`` and ``on_frame(frames_done)`` let a caller drive a progress bar;
    ``on_phase(label)`` (what the run is doing) is accepted and not called yet.
    """
    started = time.perf_counter()
    times = StageTimes()
    options.validate()
    device = resolve_device(options.device)
    transform = FrameTransform(options.resize_factor, options.rotate, tuple(options.crop))
    source = FaceSource(options.face, fps=options.fps, transform=transform)
    if source.kind == "image" and not transform.is_identity:
        log.warning("--resize_factor/--rotate/--crop are ignored for a still image (as in the original)")
    info = source.info

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
    log.info("%s: %s %dx%d at %.3f fps; %d output frames for %.2f s of audio",
             info.path, info.kind, info.width, info.height, info.fps, total, audio_seconds)

    request = RunnerRequest(
        checkpoint_path=options.checkpoint_path,
        s3fd_checkpoint=None if options.uses_fixed_box else options.s3fd_checkpoint,
        device=device, precision=options.precision, engines_dir=options.engines_dir, flavor=options.flavor,
    )
    with create_runners(options.backend, request) as runners:
        log.info("running %s %s on %s", runners.backend, runners.precision, runners.generator.device)
        dump = IntermediateDump(options.dump_intermediates) if options.dump_intermediates else None
        if options.save_frames is not None:
            Path(options.save_frames).mkdir(parents=True, exist_ok=True)
        if on_start is not None:
            on_start(total)
        try:
            if dump is not None:
                dump.save("mel", mel.astype(np.float32))
            ops = frame_ops_for(runners.generator.device, chunks, source, blend=options.blend,
                                decoder=options.decoder, batch=options.face_det_batch_size)
            detection = None
            if runners.detector is not None:
                detection = Detection(FaceDetector(runners.detector, times, ops), options, source, dump, ops)
            items = face_items(source, total, options, detection, ops, times)
            if runners.generator.device.type == "cuda":
                # On a GPU, S3FD (on its own CUDA stream, in a worker thread) overlaps Wav2Lip; on a
                # CPU the two would only fight over the same cores.
                detect_stream = torch.cuda.Stream(runners.generator.device)
                items = prefetch(on_stream(items, detect_stream), options.wav2lip_batch_size, "detect")
            done = generate(items, ops, runners.generator, options.wav2lip_batch_size, dump, times, chunks)
            ffmpeg = find_ffmpeg(options.ffmpeg)
            with VideoWriter(
                options.outfile, width=info.width, height=info.height, fps=info.fps, audio=options.audio,
                ffmpeg=ffmpeg, crf=options.crf, encoder=choose_encoder(options.encoder, ffmpeg),
            ) as writer:
                for item in done:
                    with times.stage("encode", 1):
                        frame = ops.to_host(item.frame)
                        writer.write(frame)
                        if options.save_frames is not None:
                            cv2.imwrite(str(Path(options.save_frames) / f"frame_{item.index:06d}.png"), frame)
                    if on_frame is not None:
                        on_frame(writer.frames_written)
        finally:
            if dump is not None:
                dump.close()
    return InferenceResult(
        outfile=Path(options.outfile), frames=total, fps=info.fps, width=info.width, height=info.height,
        audio_seconds=audio_seconds, device=str(runners.generator.device), backend=runners.backend,
        precision=runners.precision, seconds=time.perf_counter() - started, stages=times.rows(),
    )
