"""Face frames as batches of torch tensors on the device that will use them.

Two decoders behind one small interface (``info`` and ``frames(limit)``, yielding
:class:`~wav2lip_trt.execution.ReadyBatch` es of (B, H, W, 3) uint8 BGR tensors, each with the
event after which it may be read; see :mod:`wav2lip_trt.execution` for the execution model):

- :class:`OpenCVDecoder` wraps :class:`~wav2lip_trt.video.FaceSource`, so its frames are the
  reference's frames bit for bit. On CUDA the batches go through a small ring of pinned host
  buffers and an asynchronous copy on the decoder's own copy stream, so the upload overlaps
  decoding; each batch carries the event recorded after its copy.
- :class:`DaliDecoder` decodes with NVIDIA DALI: NVDEC for videos and nvJPEG for images on
  CUDA, DALI's CPU decoders elsewhere (VP8, VP9 and MJPEG videos only). DALI's YUV->RGB
  conversion (on the GPU its own BT.601 kernel with bilinear chroma) is not FFmpeg's swscale, so
  frames differ from OpenCV's by a few levels (more along sharp colour edges), and nvJPEG's IDCT
  is not libjpeg-turbo's. It is the GPU fast path, never the parity path. DALI ignores a
  container's display rotation, which OpenCV applies, so the decoder turns the frames itself;
  the resize/rotate/crop options run on the device with OpenCV-exact arithmetic. Yielded tensors
  never alias DALI's buffers.

Videos go through ``fn.experimental.inputs.video``: it keeps one decoder open across pipeline
runs and emits ``batch`` consecutive frames per run, so decoded memory stays at a few batches for
any length, and it never seeks, so sparse keyframes cost nothing. It takes the whole encoded file,
which is memory-mapped and handed over with ``no_copy``: on CPU DALI reads the mapping in place
(page cache, not process memory; ~190 MB resident for 10 s or 180 s of 720p MJPEG, against
~700 MB when the 270 MB file is read into memory); on CUDA DALI copies the encoded bytes once into
pinned host memory, so there the encoded size (not the decoded size) is held for the whole run.
``fn.decoders.video`` was measured and rejected: streaming with it means re-opening the container
and seeking from the last keyframe on every batch (22 vs 113 fps on a 720p VP9 clip with 128-frame
GOPs, 30 vs 156 fps on all-keyframe MJPEG, DALI CPU on 2 cores), and decoding everything at once
grows with the length.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal, Protocol

import cv2
import numpy as np
import torch

from .errors import InputError, MissingDependencyError
from .execution import ReadyBatch, on_stream
from .execution.handoff import PinnedSlab, smallest, stall
from .kernels import resize_linear
from .video import IMAGE_SUFFIXES, FaceSource, FaceSourceInfo, FrameTransform, natural_key

if TYPE_CHECKING:
    from nvidia.dali import Pipeline

log = logging.getLogger(__name__)

DecoderKind = Literal["auto", "opencv", "dali"]
DECODERS = ("auto", "opencv", "dali")
DALI_INSTALL = "pip install 'wav2lip-trt[dali]'"

# Codecs by the tag OpenCV reports (CAP_PROP_FOURCC, lower case); the values are DALI's names.
_CODEC_TAGS = {
    "h264": "h264", "avc1": "h264", "avc3": "h264", "x264": "h264",
    "hevc": "hevc", "hvc1": "hevc", "hev1": "hevc", "h265": "hevc", "x265": "hevc",
    "av01": "av1",
    "fmp4": "mpeg4", "mp4v": "mpeg4", "xvid": "mpeg4", "divx": "mpeg4", "dx50": "mpeg4",
    "vp80": "vp8", "vp08": "vp8", "vp90": "vp9", "vp09": "vp9",
    "mjpg": "mjpeg", "mjpe": "mjpeg",
}  # fmt: skip
DALI_GPU_CODECS = frozenset({"h264", "hevc", "av1", "mpeg4", "vp8", "vp9", "mjpeg"})
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
_I420 = "I420"  # OpenCV's tag for 8-bit 4:2:0 (yuv420p and yuvj420p), what NVDEC decodes everywhere
_NO_MORE_DATA = "No data was provided to the InputOperator"  # how inputs.video says the video is over


class Decoder(Protocol):
    """A face input decoded into device batches; ``frames`` starts from the first frame each call."""

    name: str  # "opencv" or "dali"
    device: torch.device
    batch: int  # frames per yielded batch; only the last one may be shorter
    info: FaceSourceInfo  # geometry after the transform, rate, the container's frame count

    def frames(self, limit: int | None = None) -> Iterator[ReadyBatch]:
        """(B, H, W, 3) uint8 BGR batches on ``device``, at most ``limit`` frames in all, each with
        its ready event (the consumer waits on it with :meth:`ReadyBatch.wait`)."""
        ...


def _groups(frames: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    group: list[np.ndarray] = []
    for frame in frames:
        group.append(frame)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _check_batch(batch: int) -> int:
    if batch < 1:
        raise InputError(f"the decode batch size must be at least 1, got {batch}")
    return batch


def orient_frames(frames: torch.Tensor, degrees: int) -> torch.Tensor:
    """Apply a container's display rotation to (B, H, W, C) frames the way OpenCV does.

    OpenCV turns ``CAP_PROP_ORIENTATION_META`` 90 into ``ROTATE_90_CLOCKWISE`` and 270 into
    ``ROTATE_90_COUNTERCLOCKWISE``; DALI ignores the metadata, so its frames need the same turn.
    """
    turns = {0: 0, 90: -1, 180: 2, 270: 1}
    if degrees not in turns:
        raise InputError(f"unsupported display rotation {degrees} degrees (only multiples of 90)")
    return frames if turns[degrees] == 0 else torch.rot90(frames, turns[degrees], dims=(1, 2))


def transform_frames(frames: torch.Tensor, transform: FrameTransform) -> torch.Tensor:
    """:class:`FrameTransform` (resize, rotate, crop) on a (B, H, W, C) uint8 batch, on its device.

    The resize is OpenCV's INTER_LINEAR bit for bit (:func:`wav2lip_trt.kernels.resize_linear`),
    one frame at a time to keep the int32 intermediates small, its taps uploaded once per batch.
    """
    if transform.resize_factor > 1:
        h, w = frames.shape[1:3]
        size = (w // transform.resize_factor, h // transform.resize_factor)
        if min(size) < 1:
            raise InputError(f"--resize_factor {transform.resize_factor} leaves nothing of a {w}x{h} frame")
        frames = resize_linear(frames, *size)
    if transform.rotate:
        frames = torch.rot90(frames, -1, dims=(1, 2))  # cv2.ROTATE_90_CLOCKWISE
    y1, y2, x1, x2 = transform.crop
    if x2 == -1:
        x2 = frames.shape[2]
    if y2 == -1:
        y2 = frames.shape[1]
    return frames[:, y1:y2, x1:x2]


class OpenCVDecoder:
    """The reference's OpenCV frames, batched, uploaded through pinned buffers on CUDA."""

    name = "opencv"

    def __init__(self, source: FaceSource, *, device: str | torch.device = "cpu", batch: int = 16, ring: int = 2,
                 stream: torch.cuda.Stream | None = None) -> None:
        self.source = source
        self.info = source.info
        self.device = torch.device(device)
        self.batch = _check_batch(batch)
        if ring < 1:
            raise InputError(f"the pinned ring needs at least 1 slot, got {ring}")
        self.ring = smallest(ring)  # pinned host batches in flight; 2 lets one upload overlap the next decode
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device {self.device} requested but torch sees no CUDA GPU")
        self.stream = _copy_stream(self.device, stream)

    def frames(self, limit: int | None = None) -> Iterator[ReadyBatch]:
        groups = _groups(self.source.frames(limit), self.batch)
        if self.device.type != "cuda":
            return (ReadyBatch(torch.from_numpy(np.stack(group)).to(self.device)) for group in groups)
        return self._uploaded(groups)

    def _uploaded(self, groups: Iterator[list[np.ndarray]]) -> Iterator[ReadyBatch]:
        copy_stream = self.stream
        assert copy_stream is not None
        shape = (self.batch, self.info.height, self.info.width, 3)
        slab: PinnedSlab | None = None  # the ring's slots, pinned exactly (made at the first batch)
        slots: list[torch.Tensor] = []
        copied: list[torch.cuda.Event | None] = [None] * self.ring
        try:
            for index, group in enumerate(groups):
                k = index % self.ring
                if copied[k] is not None:
                    copied[k].synchronize()  # the slot's previous upload must finish before it is overwritten
                if slab is None:
                    slab = PinnedSlab(self.ring * int(np.prod(shape)), pin=True)
                    slots = slab.buffers(self.ring, shape)
                host = slots[k][: len(group)]
                np.stack(group, out=host.numpy())
                with torch.cuda.device(self.device), torch.cuda.stream(copy_stream):
                    frames = torch.empty(host.shape, dtype=torch.uint8, device=self.device)
                    stall(copy_stream)
                    frames.copy_(host, non_blocking=True)
                    event = torch.cuda.Event(blocking=True)  # also waited on by this thread (ring reuse)
                    event.record(copy_stream)
                copied[k] = event
                yield ReadyBatch(frames, event)
        finally:
            for event in copied:  # uploads still reading the slab finish before it is unpinned
                if event is not None:
                    event.synchronize()
            if slab is not None:
                slab.close()


def _copy_stream(device: torch.device, stream: torch.cuda.Stream | None) -> torch.cuda.Stream | None:
    """The decoder's own stream for uploads: the one given (the run's copy stream) or one made once here."""
    if device.type != "cuda":
        return None
    return stream if stream is not None else torch.cuda.Stream(device)


def dali_available() -> bool:
    """True when NVIDIA DALI imports (an optional dependency: the ``dali`` extra)."""
    try:
        _import_dali()
    except MissingDependencyError:
        return False
    return True


def _import_dali() -> ModuleType:
    try:
        return importlib.import_module("nvidia.dali")
    except (ImportError, OSError) as exc:
        raise MissingDependencyError(f"--decoder dali needs NVIDIA DALI ({exc}): {DALI_INSTALL}") from None


def _fourcc(value: float) -> str:
    code = int(value)
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00 ")


def probe_video(path: str | os.PathLike[str]) -> tuple[str | None, str, int]:
    """(DALI's name for the codec or None, OpenCV's pixel-format tag, display rotation in degrees)."""
    cap = cv2.VideoCapture(str(path))
    try:
        codec = _CODEC_TAGS.get(_fourcc(cap.get(cv2.CAP_PROP_FOURCC)).lower())
        pixel_format = _fourcc(cap.get(cv2.CAP_PROP_CODEC_PIXEL_FORMAT))
        rotation = int(cap.get(cv2.CAP_PROP_ORIENTATION_META)) % 360 if cap.get(cv2.CAP_PROP_ORIENTATION_AUTO) else 0
    finally:
        cap.release()
    return codec, pixel_format, rotation


def _frame_files(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: natural_key(p.name),
    )


def _dali_reason(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Current pipeline object", "C++ context", "File ", "Error in"))]
    return useful[-1] if useful else type(exc).__name__


class _EventHold:
    """Keeps DALI's output buffers alive until the work that copies them out has completed."""

    def __init__(self, depth: int = 2) -> None:
        self.depth = depth
        self._held: deque[tuple[torch.cuda.Event, object]] = deque()

    def hold(self, event: torch.cuda.Event, *owners: object) -> None:
        """Keep ``owners`` until ``event`` (recorded after the last read of them) has completed."""
        self._held.append((event, owners))
        while self._held and (len(self._held) > self.depth or self._held[0][0].query()):
            self._held.popleft()[0].synchronize()

    def drain(self) -> None:
        while self._held:
            self._held.popleft()[0].synchronize()


class DaliDecoder:
    """DALI decoding (NVDEC/nvJPEG on CUDA): fast, close to OpenCV's frames but not identical."""

    name = "dali"

    def __init__(self, source: FaceSource, *, device: str | torch.device = "cuda", batch: int = 16,
                 stream: torch.cuda.Stream | None = None) -> None:
        _import_dali()
        self.source = source
        self.info = source.info
        self.path = source.path
        self.device = torch.device(device)
        self.batch = _check_batch(batch)
        self.transform = source.transform
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise InputError(f"device {self.device} requested but torch sees no CUDA GPU")
            self._backend = "mixed"
            self._device_id: int | None = (
                self.device.index if self.device.index is not None else torch.cuda.current_device()
            )
        elif self.device.type == "cpu":
            self._backend, self._device_id = "cpu", None
        else:
            raise InputError(f"--decoder dali runs on CUDA or CPU devices, not {self.device}")
        self.stream = _copy_stream(self.device, stream)
        self.rotation = 0
        self._files: list[Path] = []
        if source.kind == "video":
            codec, _, self.rotation = probe_video(self.path)
            supported = DALI_GPU_CODECS if self._backend == "mixed" else DALI_CPU_CODECS
            if codec not in supported:
                where = "on a CUDA device" if self._backend == "mixed" else "on the CPU"
                raise InputError(
                    f"{self.path}: DALI does not decode {codec or 'this codec'} {where} (it does "
                    f"{', '.join(sorted(supported))}); use --decoder opencv"
                )
            if self.rotation not in (0, 90, 180, 270):
                raise InputError(f"{self.path}: display rotation {self.rotation} is not a multiple of 90; use --decoder opencv")
        else:
            self._files = [self.path] if source.kind == "image" else _frame_files(self.path)

    def frames(self, limit: int | None = None) -> Iterator[ReadyBatch]:
        stream = self.stream
        if self.source.kind == "video":
            return self._video(limit, stream)
        return self._images(limit, stream)

    def _own(self, raw: torch.Tensor, rotation: int, stream: torch.cuda.Stream | None, hold: _EventHold | None,
             owner: object) -> ReadyBatch:
        """DALI's output turned into our own memory on ``stream``, with the event after that work."""
        if stream is None:
            return ReadyBatch(self._finish(raw, rotation, self.transform))
        assert hold is not None
        with torch.cuda.device(self.device), torch.cuda.stream(stream):
            frames = self._finish(raw, rotation, self.transform)
            event = torch.cuda.Event(blocking=True)  # also waited on by this thread (_EventHold)
            event.record(stream)
        hold.hold(event, owner, raw)
        return ReadyBatch(frames, event)

    def _threads(self) -> int:
        return max(1, min(4, os.cpu_count() or 1))

    def _video_pipeline(self) -> Pipeline:
        from nvidia.dali import fn, pipeline_def, types

        # exec_dynamic: outputs live while referenced (what _EventHold relies on), not until the next run()
        @pipeline_def(batch_size=1, num_threads=self._threads(), device_id=self._device_id, prefetch_queue_depth=2,
                      exec_dynamic=True)
        def pipeline():
            frames = fn.experimental.inputs.video(
                name="encoded", device=self._backend, sequence_length=self.batch,
                last_sequence_policy="partial", no_copy=True, affine=False,
            )  # fmt: skip
            # in DALI's own threads the swap is free; torch's flip on CPU took half the decode time
            return fn.color_space_conversion(frames, image_type=types.RGB, output_type=types.BGR)

        pipe = pipeline()
        pipe.build()
        return pipe

    def _image_pipeline(self, files: list[Path]) -> Pipeline:
        from nvidia.dali import fn, pipeline_def, types

        def encoded() -> Iterator[list[np.ndarray]]:
            for start in range(0, len(files), self.batch):
                yield [np.fromfile(f, dtype=np.uint8) for f in files[start : start + self.batch]]

        @pipeline_def(batch_size=self.batch, num_threads=self._threads(), device_id=self._device_id, prefetch_queue_depth=2,
                      exec_dynamic=True)
        def pipeline():
            data = fn.external_source(source=encoded(), name="encoded", dtype=types.UINT8, ndim=1)
            # fancy upsampling is libjpeg-turbo's (OpenCV's) chroma filter; nvJPEG defaults to a cheaper one
            return fn.decoders.image(data, device=self._backend, output_type=types.BGR, affine=False, jpeg_fancy_upsampling=True)

        pipe = pipeline()
        pipe.build()
        return pipe

    def _finish(self, raw: torch.Tensor, rotation: int, transform: FrameTransform) -> torch.Tensor:
        """Orient and transform DALI's BGR frames into memory of our own (never DALI's buffer)."""
        frames = transform_frames(orient_frames(raw, rotation), transform)
        if frames.untyped_storage().data_ptr() == raw.untyped_storage().data_ptr():
            return frames.clone(memory_format=torch.contiguous_format)
        return frames.contiguous()

    def _check(self, frames: torch.Tensor, what: str) -> None:
        if frames.shape[1:3] != (self.info.height, self.info.width):
            raise InputError(
                f"{what}: DALI gave {frames.shape[2]}x{frames.shape[1]} frames where OpenCV gives "
                f"{self.info.width}x{self.info.height}; use --decoder opencv"
            )

    def _video(self, limit: int | None, stream: torch.cuda.Stream | None) -> Iterator[ReadyBatch]:
        if limit is not None and limit <= 0:
            return
        pipe = self._video_pipeline()
        encoded = np.memmap(self.path, dtype=np.uint8, mode="r")  # must outlive the pipeline (no_copy)
        pipe.feed_input("encoded", [encoded])
        hold = _EventHold() if stream is not None else None
        produced, last_full = 0, False
        try:
            while limit is None or produced < limit:
                try:
                    (out,) = pipe.run()
                except RuntimeError as exc:
                    if last_full and _NO_MORE_DATA in str(exc):
                        return  # the previous batch ended the video exactly
                    raise InputError(f"{self.path}: DALI could not decode frame {produced}: {_dali_reason(exc)}; "
                                     "use --decoder opencv") from None
                with on_stream(stream):
                    raw = torch.from_dlpack(out[0])  # (F, H, W, 3) BGR; ``stream`` waits for DALI's work
                ready = self._own(raw, self.rotation, stream, hold, out)
                frames = ready.tensor
                if produced == 0:
                    self._check(frames, str(self.path))
                last_full = frames.shape[0] == self.batch
                if limit is not None and produced + frames.shape[0] > limit:
                    ready = ReadyBatch(frames[: limit - produced], ready.ready)
                produced += ready.tensor.shape[0]
                yield ready
                if not last_full:
                    return
        finally:
            if hold is not None:
                hold.drain()
            del pipe, encoded

    def _images(self, limit: int | None, stream: torch.cuda.Stream | None) -> Iterator[ReadyBatch]:
        files = self._files if limit is None else self._files[: max(limit, 0)]
        if not files:
            return
        pipe = self._image_pipeline(files)
        hold = _EventHold() if stream is not None else None
        done = 0
        try:
            while done < len(files):
                try:
                    (out,) = pipe.run()
                except StopIteration:
                    return
                except RuntimeError as exc:
                    where = files[done] if len(files) == 1 else f"{files[done]}..{files[min(done + self.batch, len(files)) - 1].name}"
                    raise InputError(f"{where}: DALI could not decode: {_dali_reason(exc)}; use --decoder opencv") from None
                if not out.is_dense_tensor():
                    odd = next(i for i in range(len(out)) if tuple(out[i].shape()) != tuple(out[0].shape()))
                    raise InputError(f"{files[done + odd]}: size differs from the first frame's; all frames must share one size")
                with on_stream(stream):
                    raw = torch.from_dlpack(out.as_tensor())  # (B, H, W, 3) BGR
                ready = self._own(raw, 0, stream, hold, out)
                self._check(ready.tensor, str(files[done]))
                done += ready.tensor.shape[0]
                yield ready
        finally:
            if hold is not None:
                hold.drain()
            del pipe


def dali_handles(source: FaceSource, device: torch.device) -> bool:
    """Whether ``auto`` should decode ``source`` with DALI on ``device``.

    Only on CUDA (on CPU OpenCV is both faster and exact), only videos NVDEC decodes everywhere
    (8-bit 4:2:0 in a codec DALI lists) and folders of frames; a single still image is decoded once,
    so OpenCV's exact decode costs nothing there.
    """
    if device.type != "cuda" or source.kind == "image":
        return False
    if source.kind == "video":
        codec, pixel_format, rotation = probe_video(source.path)
        if codec not in DALI_GPU_CODECS or pixel_format != _I420 or rotation not in (0, 90, 180, 270):
            return False
    return dali_available()


def open_decoder(
    path: str | os.PathLike[str],
    *,
    kind: str = "auto",
    device: str | torch.device = "cpu",
    fps: float = 25.0,
    transform: FrameTransform = FrameTransform(),
    batch: int = 16,
    ring: int = 2,
    stream: torch.cuda.Stream | None = None,
) -> Decoder:
    """The decoder for ``--decoder kind``: ``auto`` is DALI on CUDA where it applies, else OpenCV.

    ``opencv`` is the reference-exact choice; ``dali`` fails with a clear error where DALI is
    missing or cannot decode the input, instead of silently falling back.
    """
    if kind not in DECODERS:
        raise InputError(f"unknown decoder {kind!r}; choose one of {', '.join(DECODERS)}")
    device = torch.device(device)
    source = FaceSource(path, fps=fps, transform=transform)
    if kind == "dali" or (kind == "auto" and dali_handles(source, device)):
        decoder: Decoder = DaliDecoder(source, device=device, batch=batch, stream=stream)
    else:
        decoder = OpenCVDecoder(source, device=device, batch=batch, ring=ring, stream=stream)
    log.info("decoding %s with %s on %s", source.path, decoder.name, device)
    return decoder
