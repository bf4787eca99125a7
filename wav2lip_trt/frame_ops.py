"""Where the per-frame work around the networks happens: on the host, or on the runners' device.

:class:`HostOps` is the reference: NumPy and OpenCV, bit for bit the original's arithmetic
(including the channels-last tensors its CPU convolutions see). :class:`DeviceOps` runs the same
steps as batched kernels (``wav2lip_trt.kernels``) next to the networks, so a GPU pipeline moves
each frame batch to the device once per stage and copies back only boxes and finished frames.
The pipeline picks one with :func:`frame_ops_for`; nothing else in it knows the difference. On a
GPU every launch here goes to the run's compute stream (see :mod:`wav2lip_trt.execution`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, Union

import numpy as np
import torch

from .audio import MelChunks
from .detect import Box as DetBox
from .detect import run_detector
from .faces import IMG_SIZE, Box, crop_faces, generator_inputs, paste_back, prediction_to_uint8
from .runners.base import S3FD_INPUTS, S3FD_OUTPUTS, WAV2LIP_INPUTS, Runner
from .errors import InputError
from .execution import DeviceContext, FinishedBatch
from .execution.context import Readback
from .execution.budget import CPU_GENERATOR_CHUNK, HELD_BATCHES, chunk_sizes
from .execution.memory import HostPool, Workspace
from .execution.handoff import upload
from .stages import StageTimes, prefetch, timed
from .video import FaceSource

if TYPE_CHECKING:
    from .decode import Decoder

Frame = Union[np.ndarray, torch.Tensor]

BLENDS = ("none", "feather")


class FrameOps(Protocol):
    """Frames are opaque to the pipeline: NumPy arrays on the host path, device tensors on the GPU path."""

    pixel_format: str  # what finished batches hold for the writer: "bgr24" frames, or "yuv420p" (GPU path)

    def frames(self, limit: int | None, ahead: int, times: StageTimes) -> Iterator[Frame]:
        """Decoded, transformed (H, W, 3) uint8 BGR frames from the start, at most ``limit``.

        Decoding runs in a worker thread about ``ahead`` frames ahead of the caller (busy time
        charged to the ``decode`` stage); on the GPU path the caller's thread makes the compute
        stream wait for each batch's upload only when it takes the batch, so work already queued
        for earlier frames never waits for later uploads.
        """
        ...

    def stack(self, frames: Sequence[Frame]) -> Frame:
        ...

    def copy(self, frame: Frame) -> Frame:
        ...

    def release(self, frames: Sequence[Frame]) -> None:
        """Frames from :meth:`frames` the caller is done with (S3FD has seen them): their buffers may be
        decoded into again, so the detection pass makes no frame buffer per frame."""
        ...

    def to_host(self, frame: Frame) -> np.ndarray:
        """One frame (or any tensor of this path) on the host, now (a blocking copy on the GPU path:
        for dumps, not the hot path)."""
        ...

    def scale(self, frames: Frame, width: int, height: int) -> Frame:
        """A (B, H, W, 3) batch resized to ``width`` x ``height`` (OpenCV INTER_LINEAR, bit-exact everywhere)."""
        ...

    def detect(self, runner: Runner, frames: Frame, times: StageTimes) -> list[DetBox | None]:
        """S3FD on (B, H, W, 3) uint8 BGR frames: the chosen (x1, y1, x2, y2) per frame, or None."""
        ...

    def lip_sync(
        self, runner: Runner, frames: Sequence[Frame], boxes: Sequence[Box | None], indices: Sequence[int],
        times: StageTimes, *, keep_pred: bool = False,
    ) -> tuple[FinishedBatch, torch.Tensor | None]:
        """Crop, run Wav2Lip, paste the faces of the frames that have a box.

        Returns the finished frames (all of them, in order, on their way to the host) and, with
        ``keep_pred``, the predictions of the boxed frames, (F, 3, 96, 96) float32, where they were
        made: on the host for :class:`HostOps`, on the device (valid on the compute stream) for
        :class:`DeviceOps` — the scorer uses them there; a dump brings them back with :meth:`to_host`.
        """
        ...


class HostOps:
    """NumPy/OpenCV stages: the reference-exact path.

    With a ``source``, video frames are decoded into a :class:`HostPool` and go back to it when
    the writer has written them (``frames_kept`` bounds the free ones); crops, the generator's
    input and the predictions live in a :class:`Workspace`. A steady run allocates no frame or
    batch buffers (see :mod:`wav2lip_trt.execution.memory`).
    """

    pixel_format = "bgr24"  # what its finished batches hold (the writer's input format)

    def __init__(self, chunks: MelChunks, blend: str = "none", source: FaceSource | None = None, *,
                 frames_kept: int = 0) -> None:
        self.chunks, self.blend, self.source = chunks, blend, source
        self.pool = HostPool((source.info.height, source.info.width, 3), keep=frames_kept) if source is not None else None
        self.work = Workspace()
        self.chunk = 0  # faces per generator forward: the run's first (largest) chunk, smaller ones padded to it

    def frames(self, limit: int | None, ahead: int, times: StageTimes) -> Iterator[np.ndarray]:
        assert self.source is not None
        buffer = self.pool.take if self.pool is not None else None
        return prefetch(timed(self.source.frames(limit, buffer), times, "decode"), ahead, "decode")

    def stack(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(frames)

    def copy(self, frame: np.ndarray) -> np.ndarray:
        if self.pool is not None and frame.shape == self.pool.shape and frame.dtype == self.pool.dtype:
            return self.pool.copy(frame)
        return frame.copy()

    def release(self, frames: Sequence[np.ndarray]) -> None:
        if self.pool is not None:
            self.pool.give(frames)

    def to_host(self, frame: np.ndarray | torch.Tensor) -> np.ndarray:
        return np.asarray(frame)

    def scale(self, frames: np.ndarray, width: int, height: int) -> np.ndarray:
        from .detection.scaled import scale_frames_host

        return scale_frames_host(frames, width, height)

    def detect(self, runner: Runner, frames: np.ndarray, times: StageTimes) -> list[DetBox | None]:
        return run_detector(runner, frames, times)

    def lip_sync(
        self, runner: Runner, frames: Sequence[np.ndarray], boxes: Sequence[Box | None], indices: Sequence[int],
        times: StageTimes, *, keep_pred: bool = False,
    ) -> tuple[FinishedBatch, torch.Tensor | None]:
        faced = [i for i, box in enumerate(boxes) if box is not None]
        frames = list(frames)
        pool = self.pool
        release = (lambda: pool.give(frames)) if pool is not None else (lambda: None)  # after the writer
        finished = FinishedBatch(indices[0] if len(indices) else 0, frames, release)
        if not faced:
            return finished, None
        boxed = [frames[i] for i in faced]
        face_boxes = [boxes[i] for i in faced]
        n, work = len(faced), self.work
        with times.stage("crop", n):
            crops = crop_faces(boxed, face_boxes, out=work.get("crops", (n, IMG_SIZE, IMG_SIZE, 3), np.uint8))
            mel, face = generator_inputs(crops, self.chunks.gather([indices[i] for i in faced]),
                                         out=work.get("face", (n, IMG_SIZE, IMG_SIZE, 6), np.float32))
        with times.stage("generate", n):
            # a prediction kept for the caller gets memory of its own; otherwise the workspace's. Each
            # chunk's output is copied out and dropped at once: kept until the next chunk ran, it would
            # sit among that chunk's activations and shift them up the heap, chunk after chunk
            pred = torch.empty((n, 3, IMG_SIZE, IMG_SIZE)) if keep_pred else \
                torch.from_numpy(work.get("pred", (n, 3, IMG_SIZE, IMG_SIZE), np.float32))
            start = 0
            for size in chunk_sizes(n, CPU_GENERATOR_CHUNK):  # bounded activations, same bits
                self.chunk = max(self.chunk, size)
                feed = {WAV2LIP_INPUTS[0]: mel[start : start + size], WAV2LIP_INPUTS[1]: face[start : start + size]}
                if 1 < size < self.chunk:  # one shape for every chunk, so every batch reuses the same heap blocks
                    feed = {name: _padded(work, name, part, self.chunk) for name, part in feed.items()}
                pred[start : start + size] = runner.infer(feed)["pred"][:size]
                start += size
        with times.stage("paste", n):
            if self.blend == "none":
                for frame, generated, (y1, y2, x1, x2) in zip(boxed, prediction_to_uint8(pred.numpy()), face_boxes):
                    paste_back(frame, generated, (y1, y2, x1, x2),  # type: ignore[arg-type]
                               work.get("paste", (y2 - y1, x2 - x1, 3), np.uint8))
            else:
                _paste_with_kernel(boxed, pred, face_boxes, self.blend)  # type: ignore[arg-type]
        return finished, (pred if keep_pred else None)


def _padded(work: Workspace, name: str, part: torch.Tensor, rows: int) -> torch.Tensor:
    """``part`` (an NHWC array seen as NCHW, as :func:`~wav2lip_trt.faces.generator_inputs` makes it)
    followed by zero rows up to ``rows``, with the same strides: a face's bits do not depend on the
    other faces in its batch from 2 faces up (see :data:`~wav2lip_trt.execution.budget.CPU_GENERATOR_CHUNK`)."""
    nhwc = part.permute(0, 2, 3, 1).numpy()
    out = work.get(f"pad:{name}", (rows, *nhwc.shape[1:]), nhwc.dtype)
    out[: len(nhwc)] = nhwc
    out[len(nhwc) :] = 0
    return torch.from_numpy(out).permute(0, 3, 1, 2)


class DeviceOps:
    """Batched kernels on the runners' device (Triton on CUDA, their torch references elsewhere).

    With a ``decoder`` the frames themselves live on the device (pinned-ring uploads or NVDEC);
    finished batches stay there until the writer thread reads them back, ``batch_frames`` frames
    at a time (:class:`~wav2lip_trt.execution.context.Readback`). Host frames given directly are
    uploaded. With ``yuv`` finished frames are converted to ``yuv420p`` on the device
    first (:func:`~wav2lip_trt.kernels.yuv.bgr_to_yuv420`: half the bytes to copy back, and no
    conversion left to ffmpeg); ``pixel_format`` says which the writer gets.
    """

    def __init__(self, chunks: MelChunks, context: DeviceContext | torch.device, blend: str = "none",
                 decoder: Decoder | None = None, *, batch_frames: int = 128, yuv: bool = False,
                 buffers: int | None = None, size: tuple[int, int] | None = None) -> None:
        del buffers, size  # accepted for older callers: the readback ring is sized by ``batch_frames`` alone
        self.ctx = context if isinstance(context, DeviceContext) else DeviceContext(context)
        self.device, self.blend, self.decoder = self.ctx.device, blend, decoder
        self.mel, self.starts = None, None  # no chunks: detection only
        if chunks is not None:
            with self.ctx.on_compute():
                self.mel = upload(np.ascontiguousarray(chunks.mel, dtype=np.float32), self.device, self.ctx.compute)
            self.starts = chunks.starts()
        self.batch_frames = batch_frames
        self.yuv = yuv
        self.pixel_format = "yuv420p" if self.yuv else "bgr24"
        self._readback: Readback | None = None

    def frames(self, limit: int | None, ahead: int, times: StageTimes) -> Iterator[torch.Tensor]:
        assert self.decoder is not None
        batches = max(1, ahead // self.decoder.batch)
        decoded = prefetch(timed(self.decoder.frames(limit), times, "decode"), batches, "decode")
        try:
            for batch in decoded:
                yield from batch.wait(self.ctx.compute).unbind(0)  # in the consuming thread, when it is needed
        finally:
            decoded.close()  # the decode thread ends with this generator, whoever holds a reference to it

    def stack(self, frames: Sequence[torch.Tensor]) -> torch.Tensor:
        with self.ctx.on_compute():
            return self._upload(frames)

    def copy(self, frame: torch.Tensor) -> torch.Tensor:
        with self.ctx.on_compute():
            return frame.clone()

    def release(self, frames: Sequence[torch.Tensor]) -> None:
        del frames  # views of the decoder's batches, which it recycles itself

    def to_host(self, frame: torch.Tensor) -> np.ndarray:
        with self.ctx.on_compute():
            return frame.detach().cpu().numpy()

    def scale(self, frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
        from .detection.scaled import scale_frames_device

        with self.ctx.on_compute():
            return scale_frames_device(self._upload(frames), width, height)

    def _upload(self, frames: Sequence[Frame] | Frame) -> torch.Tensor:
        """A (B, H, W, 3) batch on the device, built on the compute stream (call inside ``on_compute``)."""
        if isinstance(frames, torch.Tensor):
            return frames.to(self.device)
        if len(frames) and isinstance(frames[0], torch.Tensor):
            return torch.stack(list(frames)).to(self.device)
        return upload(np.ascontiguousarray(np.stack(frames)), self.device, self.ctx.compute)

    def detect(self, runner: Runner, frames: Frame, times: StageTimes) -> list[DetBox | None]:
        from .kernels import choose_faces_packed, finish_packed, s3fd_preprocess

        with times.stage("detect", len(frames)), self.ctx.on_compute():
            dtype = runner.input_dtypes.get(S3FD_INPUTS[0], torch.float32)
            image = s3fd_preprocess(self._upload(frames), dtype)
            out = runner.infer({S3FD_INPUTS[0]: image})
            outputs = [out[name] for name in S3FD_OUTPUTS]
        with times.stage("postprocess", len(frames)):
            with self.ctx.on_compute():
                packed = choose_faces_packed(outputs)
                host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=self.ctx.is_cuda)
            rows = self.ctx.to_host(packed, host).synchronize().tolist()  # the boxes are needed on the host
            with self.ctx.on_compute():
                return finish_packed(outputs, rows)

    def lip_sync(
        self, runner: Runner, frames: Sequence[Frame], boxes: Sequence[Box | None], indices: Sequence[int],
        times: StageTimes, *, keep_pred: bool = False,
    ) -> tuple[FinishedBatch, torch.Tensor | None]:
        from .kernels import crop_to_generator_input, paste_back_batch

        faced = [i for i, box in enumerate(boxes) if box is not None]
        pred = None
        with times.stage("crop", len(faced)), self.ctx.on_compute():
            batch = self._upload(frames).contiguous()
            if faced:
                host_boxes = np.asarray([boxes[i] for i in faced], dtype=np.int64)
                starts = self.starts[np.asarray([indices[i] for i in faced])]
                params = upload(np.concatenate([host_boxes, starts[:, None], np.asarray(faced)[:, None]], axis=1),
                                self.device, self.ctx.compute)  # one upload of the batch's parameters
                boxes_d, starts_d, rows_d = params[:, :4], params[:, 4], params[:, 5]
                every = len(faced) == len(frames)
                sub = batch if every else batch.index_select(0, rows_d)
                mel, face = crop_to_generator_input(sub, boxes_d, self.mel, starts_d)
        if faced:
            with times.stage("generate", len(faced)):
                pred = runner.infer({WAV2LIP_INPUTS[0]: mel, WAV2LIP_INPUTS[1]: face})["pred"]
            with times.stage("paste", len(faced)), self.ctx.on_compute():
                paste_back_batch(sub, pred, boxes_d, self.blend, host_boxes=host_boxes)
                if not every:
                    batch.index_copy_(0, rows_d, sub)
        finished = self._finish(batch, indices[0] if len(indices) else 0)
        return finished, (pred if keep_pred else None)

    def _finish(self, batch: torch.Tensor, first_index: int) -> FinishedBatch:
        """The finished batch, still on the device, handed to the writer thread with its event.

        Nothing waits here: the writer's :class:`Readback` copies it out on the readback stream,
        so the next batch's kernels start at once and the copy overlaps them.
        """
        if self.yuv:
            from .kernels.yuv import bgr_to_yuv420

            with self.ctx.on_compute():
                batch = bgr_to_yuv420(batch)
        if self._readback is None:
            self._readback = Readback(self.ctx, self.batch_frames, tuple(batch.shape[1:]))
        return FinishedBatch(first_index, self.ctx.finished(batch), readback=self._readback)

    def close(self) -> None:
        """Unpin the readback ring (after the writer has finished)."""
        if self._readback is not None:
            self._readback.close()


def _paste_with_kernel(frames: Sequence[np.ndarray], pred: torch.Tensor, boxes: Sequence[Box], blend: str) -> None:
    from .kernels import paste_back_batch

    batch = torch.from_numpy(np.stack(frames))
    paste_back_batch(batch, pred, torch.tensor(np.asarray(boxes, dtype=np.int64)), blend, impl="torch")
    for frame, done in zip(frames, batch.numpy()):
        frame[...] = done


def frame_ops_for(context: DeviceContext, chunks: MelChunks, source: FaceSource, *, blend: str = "none",
                  decoder: str = "auto", batch: int = 16, batch_frames: int = 128, yuv: bool = False,
                  buffers: int | None = None) -> FrameOps:
    """Device frames and kernels next to GPU runners; the exact host path everywhere else.

    ``batch`` is the decode batch; ``batch_frames`` the chunk finished frames are read back in
    (the host holds two); ``yuv`` converts them to ``yuv420p`` on the device (GPU path only).
    """
    del buffers  # accepted for older callers (see DeviceOps)
    if not context.is_cuda:
        if decoder == "dali":
            raise InputError("--decoder dali needs --device cuda (DALI decodes on the GPU here)")
        return HostOps(chunks, blend, source, frames_kept=batch + (HELD_BATCHES + 1) * batch_frames)
    from .decode import open_decoder

    frames = open_decoder(source.path, kind=decoder, device=context.device, fps=source.info.fps,
                          transform=source.transform, batch=batch, stream=context.copy)
    return DeviceOps(chunks, context, blend, decoder=frames, batch_frames=batch_frames, yuv=yuv)
