"""Where the per-frame work around the networks happens: on the host, or on the runners' device.

:class:`HostOps` is the reference: NumPy and OpenCV, bit for bit the original's arithmetic
(including the channels-last tensors its CPU convolutions see). :class:`DeviceOps` runs the same
steps as batched kernels (``wav2lip_trt.kernels``) next to the networks, so a GPU pipeline moves
each frame batch to the device once per stage and copies back only boxes and finished frames.
The pipeline picks one with :func:`frame_ops_for`; nothing else in it knows the difference.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, Union

import numpy as np
import torch

from .audio import MelChunks
from .detect import Box as DetBox
from .detect import run_detector
from .faces import Box, crop_faces, generator_inputs, paste_back, prediction_to_uint8
from .runners.base import S3FD_INPUTS, S3FD_OUTPUTS, WAV2LIP_INPUTS, Runner
from .errors import InputError
from .stages import StageTimes
from .video import FaceSource

if TYPE_CHECKING:
    from .decode import Decoder

Frame = Union[np.ndarray, torch.Tensor]

BLENDS = ("none", "feather")


class FrameOps(Protocol):
    """Frames are opaque to the pipeline: NumPy arrays on the host path, device tensors on the GPU path."""

    def frames(self, limit: int | None) -> Iterator[Frame]:
        """Decoded, transformed (H, W, 3) uint8 BGR frames from the start, at most ``limit``."""
        ...

    def stack(self, frames: Sequence[Frame]) -> Frame:
        ...

    def copy(self, frame: Frame) -> Frame:
        ...

    def to_host(self, frame: Frame) -> np.ndarray:
        ...

    def detect(self, runner: Runner, frames: np.ndarray, times: StageTimes) -> list[DetBox | None]:
        """S3FD on (B, H, W, 3) uint8 BGR frames: the chosen (x1, y1, x2, y2) per frame, or None."""
        ...

    def lip_sync(
        self, runner: Runner, frames: Sequence[np.ndarray], boxes: Sequence[Box], indices: Sequence[int],
        times: StageTimes,
    ) -> torch.Tensor:
        """Crop, run Wav2Lip, paste into ``frames`` in place; returns pred (B, 3, 96, 96) in [0, 1]."""
        ...


class HostOps:
    """NumPy/OpenCV stages: the reference-exact path."""

    def __init__(self, chunks: MelChunks, blend: str = "none", source: FaceSource | None = None) -> None:
        self.chunks, self.blend, self.source = chunks, blend, source

    def frames(self, limit: int | None) -> Iterator[np.ndarray]:
        assert self.source is not None
        return self.source.frames(limit)

    def stack(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(frames)

    def copy(self, frame: np.ndarray) -> np.ndarray:
        return frame.copy()

    def to_host(self, frame: np.ndarray) -> np.ndarray:
        return frame

    def detect(self, runner: Runner, frames: np.ndarray, times: StageTimes) -> list[DetBox | None]:
        return run_detector(runner, frames, times)

    def lip_sync(
        self, runner: Runner, frames: Sequence[np.ndarray], boxes: Sequence[Box], indices: Sequence[int],
        times: StageTimes,
    ) -> torch.Tensor:
        with times.stage("crop", len(frames)):
            mel, face = generator_inputs(crop_faces(frames, boxes), self.chunks.gather(indices))
        with times.stage("generate", len(frames)):
            pred = runner.infer({WAV2LIP_INPUTS[0]: mel, WAV2LIP_INPUTS[1]: face})["pred"].detach().cpu()
        with times.stage("paste", len(frames)):
            if self.blend == "none":
                for frame, generated, box in zip(frames, prediction_to_uint8(pred.numpy()), boxes):
                    paste_back(frame, generated, box)
            else:
                _paste_with_kernel(frames, pred, boxes, self.blend)
        return pred


class DeviceOps:
    """Batched kernels on the runners' device (Triton on CUDA, their torch references elsewhere).

    With a ``decoder`` the frames themselves live on the device (pinned-ring uploads or NVDEC)
    and only finished frames come back to the host; host frames given directly are uploaded.
    """

    def __init__(self, chunks: MelChunks, device: torch.device, blend: str = "none",
                 detector_dtype: torch.dtype = torch.float32, decoder: Decoder | None = None) -> None:
        self.device, self.blend, self.detector_dtype, self.decoder = device, blend, detector_dtype, decoder
        self.mel = torch.from_numpy(np.ascontiguousarray(chunks.mel, dtype=np.float32)).to(device)
        self.starts = torch.from_numpy(chunks.starts())

    def frames(self, limit: int | None) -> Iterator[torch.Tensor]:
        assert self.decoder is not None
        for batch in self.decoder.frames(limit):
            yield from batch.unbind(0)

    def stack(self, frames: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(frames))

    def copy(self, frame: torch.Tensor) -> torch.Tensor:
        return frame.clone()

    def to_host(self, frame: torch.Tensor) -> np.ndarray:
        return frame.cpu().numpy()

    def _upload(self, frames: Sequence[Frame] | Frame) -> torch.Tensor:
        if isinstance(frames, torch.Tensor):
            return frames.to(self.device)
        if len(frames) and isinstance(frames[0], torch.Tensor):
            return torch.stack(list(frames)).to(self.device)
        batch = torch.from_numpy(np.ascontiguousarray(np.stack(frames)))
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch

    def detect(self, runner: Runner, frames: np.ndarray, times: StageTimes) -> list[DetBox | None]:
        from .kernels import choose_faces_device, s3fd_preprocess

        with times.stage("detect", len(frames)):
            image = s3fd_preprocess(self._upload(frames), self.detector_dtype)
            out = runner.infer({S3FD_INPUTS[0]: image})
        with times.stage("postprocess", len(frames)):
            return choose_faces_device([out[name] for name in S3FD_OUTPUTS]).to_list()

    def lip_sync(
        self, runner: Runner, frames: Sequence[np.ndarray], boxes: Sequence[Box], indices: Sequence[int],
        times: StageTimes,
    ) -> torch.Tensor:
        from .kernels import crop_to_generator_input, paste_back_batch

        with times.stage("crop", len(frames)):
            batch = self._upload(frames)
            boxes_t = torch.tensor(np.asarray(boxes, dtype=np.int64))
            mel, face = crop_to_generator_input(batch, boxes_t, self.mel, self.starts[np.asarray(indices)])
        with times.stage("generate", len(frames)):
            pred = runner.infer({WAV2LIP_INPUTS[0]: mel, WAV2LIP_INPUTS[1]: face})["pred"]
        with times.stage("paste", len(frames)):
            paste_back_batch(batch, pred, boxes_t, self.blend)
            done = batch if isinstance(frames[0], torch.Tensor) else batch.cpu().numpy()
            for frame, pasted in zip(frames, done):
                frame[...] = pasted
        return pred.detach().float().cpu()


def _paste_with_kernel(frames: Sequence[np.ndarray], pred: torch.Tensor, boxes: Sequence[Box], blend: str) -> None:
    from .kernels import paste_back_batch

    batch = torch.from_numpy(np.stack(frames))
    paste_back_batch(batch, pred, torch.tensor(np.asarray(boxes, dtype=np.int64)), blend, impl="torch")
    for frame, done in zip(frames, batch.numpy()):
        frame[...] = done


def frame_ops_for(device: torch.device, chunks: MelChunks, source: FaceSource, *, blend: str = "none",
                  decoder: str = "auto", batch: int = 16) -> FrameOps:
    """Device frames and kernels next to GPU runners; the exact host path everywhere else."""
    if device.type != "cuda":
        if decoder == "dali":
            raise InputError("--decoder dali needs --device cuda (DALI decodes on the GPU here)")
        return HostOps(chunks, blend, source)
    from .decode import open_decoder

    frames = open_decoder(source.path, kind=decoder, device=device, fps=source.info.fps, transform=source.transform,
                          batch=batch)
    return DeviceOps(chunks, device, blend, decoder=frames)
