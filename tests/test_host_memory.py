"""Host memory of a CPU run (issue 21): frames recycled through a pool, batch buffers reused, the same bits."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
import torch

from wav2lip_trt.audio import MelChunks, melspectrogram
from wav2lip_trt.checkpoints import load_wav2lip
from wav2lip_trt.execution.memory import HostPool, Workspace, mapped
from wav2lip_trt.frame_ops import HostOps
from wav2lip_trt.options import InferenceOptions
from wav2lip_trt.pipeline import face_items, generate
from wav2lip_trt.runners.base import WAV2LIP_INPUTS, WAV2LIP_OUTPUTS
from wav2lip_trt.runners.torch_runner import TorchRunner
from wav2lip_trt.samples import speechlike_audio, talking_face_frames, write_video
from wav2lip_trt.stages import StageTimes
from wav2lip_trt.video import FaceSource

BOX = (20, 90, 30, 100)


def test_a_pool_takes_back_only_its_own_arrays() -> None:
    pool = HostPool((4, 5, 3), keep=2)
    a, b, c = pool.take(), pool.take(), pool.take()
    stranger = np.empty((4, 5, 3), np.uint8)
    pool.give([a, stranger, a])  # a stranger's array is never handed out to be overwritten; a only once
    assert pool.take() is a
    assert pool.take() is not stranger and pool.made == 4
    pool.give([b, c, a])  # keeps at most two
    assert {id(pool.take()), id(pool.take())} <= {id(a), id(b), id(c)} and pool.made == 4
    assert pool.take() is not a and pool.made == 5
    copied = pool.copy(np.full((4, 5, 3), 7, np.uint8))
    assert (copied == 7).all()


def test_a_workspace_view_is_contiguous_and_reused() -> None:
    work = Workspace()
    first = work.get("x", (4, 6), np.float32)
    smaller = work.get("x", (2, 6), np.float32)
    assert smaller.flags.c_contiguous and smaller.shape == (2, 6)
    assert np.shares_memory(first, smaller)
    assert not np.shares_memory(work.get("x", (40, 6), np.float32), first)  # grown


def _mapping(array: np.ndarray) -> object:
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array.obj if isinstance(array, memoryview) else array


def test_pooled_frames_and_workspaces_live_in_their_own_mappings_outside_the_heap() -> None:
    """Long-lived recycled buffers kept out of glibc's heap, where they would pin the holes between a
    batch's activations and push the next batch's up (execution/memory.py: peak RSS)."""
    assert isinstance(_mapping(HostPool((720, 1280, 3)).take()), mmap.mmap)
    assert isinstance(_mapping(Workspace().get("x", (16, 96, 96, 6), np.float32)), mmap.mmap)
    array = mapped((3, 4), np.float32)
    array[:] = 1.5
    assert array.shape == (3, 4) and array.dtype == np.float32 and array.flags.writeable and array.sum() == 18


class _Shapes:
    """The real generator, recording the batch size of every forward."""

    def __init__(self, runner: TorchRunner) -> None:
        self.runner, self.sizes = runner, []

    def infer(self, feed):
        self.sizes.append(len(feed[WAV2LIP_INPUTS[1]]))
        return self.runner.infer(feed)


def test_a_short_chunk_runs_padded_to_the_runs_chunk_and_keeps_its_bits(wav2lip) -> None:
    """After a batch of 8 faces, a batch of 5 runs as one forward of 8 (the same activation blocks),
    and its frames and predictions are those of a forward of 5."""
    frames = list(talking_face_frames(5, 128, 112, seed=6))
    chunks = MelChunks(melspectrogram(speechlike_audio(1.0, seed=7)), 25.0)
    results = []
    for first in (0, 8):
        ops, runner = HostOps(chunks), _Shapes(wav2lip)
        ops.chunk = first  # as after an earlier batch whose chunk was 8 faces
        batch = [f.copy() for f in frames]
        finished, pred = ops.lip_sync(runner, batch, [BOX] * 5, list(range(5)), StageTimes(), keep_pred=True)
        results.append((batch, pred, runner.sizes))
    (plain, plain_pred, plain_sizes), (padded, padded_pred, padded_sizes) = results
    assert plain_sizes == [5] and padded_sizes == [8]
    assert torch.equal(plain_pred, padded_pred)
    assert all(np.array_equal(a, b) for a, b in zip(plain, padded))
    assert not all(np.array_equal(a, b) for a, b in zip(plain, frames))  # the faces were pasted


@pytest.fixture(scope="module")
def wav2lip(checkpoints):
    return TorchRunner(load_wav2lip(checkpoints[0]), WAV2LIP_INPUTS, WAV2LIP_OUTPUTS)


def _run(ops: HostOps, source: FaceSource, options: InferenceOptions, chunks: MelChunks, runner: TorchRunner,
         release: bool) -> list[np.ndarray]:
    out = []
    items = face_items(source, len(chunks), options, None, ops, StageTimes(), 4)
    for batch in generate(items, ops, runner, 6, None, reference_batch=6, total=len(chunks)):
        out += [f.copy() for f in batch.host_frames()]  # what the writer does with them, before release
        if release:
            batch.release()
    return out


def test_frames_go_round_the_pool_and_the_output_keeps_its_bits(wav2lip, checkpoints, tmp_path) -> None:
    """A 27-frame run makes a pool buffer for the frames in flight only, and writes the frames a run
    without any reuse writes (fresh arrays everywhere), bit for bit."""
    video = write_video(tmp_path / "face.mp4", talking_face_frames(30, 128, 112, seed=4), 25.0)
    chunks = MelChunks(melspectrogram(speechlike_audio(1.2, seed=5)), 25.0)
    source = FaceSource(video)
    options = InferenceOptions(checkpoint_path=checkpoints[0], face=video, audio=video, box=BOX)
    pooled = HostOps(chunks, source=source, frames_kept=64)
    recycled = _run(pooled, source, options, chunks, wav2lip, release=True)
    assert len(recycled) == len(chunks) == 27
    # decode look-ahead (4 + the queue's and the worker's) and one batch of 6 at a time: far fewer than 27
    assert pooled.pool is not None and pooled.pool.made <= 16, pooled.pool.made
    fresh = HostOps(chunks)  # no source: frames decoded by OpenCV into new arrays, nothing given back
    fresh.frames = lambda limit, ahead, times: source.frames(limit)  # type: ignore[method-assign]
    plain = _run(fresh, source, options, chunks, wav2lip, release=False)
    assert all(np.array_equal(a, b) for a, b in zip(recycled, plain))


@pytest.mark.parametrize("every", [1, 3])
def test_the_detection_pass_gives_its_frames_back_to_the_pool(checkpoints, tmp_path, every) -> None:
    """S3FD's frames are decoded into the pool and go back once detected (or skipped by --detect-every):
    dropped instead, every frame was a fresh mapping faulted in page by page (~6,000 faults a 4K frame).
    The boxes are those of a pass over fresh arrays."""
    from wav2lip_trt.checkpoints import load_s3fd
    from wav2lip_trt.detect import FaceDetector
    from wav2lip_trt.detection.stage import DetectionPass
    from wav2lip_trt.runners.base import S3FD_INPUTS, S3FD_OUTPUTS

    video = write_video(tmp_path / "face.mp4", talking_face_frames(20, 128, 112, seed=4), 25.0)
    source = FaceSource(video)
    options = InferenceOptions(checkpoint_path=checkpoints[0], s3fd_checkpoint=checkpoints[1], face=video,
                               audio=video, face_det_batch_size=4, detect_every=every)
    s3fd = TorchRunner(load_s3fd(checkpoints[1]), S3FD_INPUTS, S3FD_OUTPUTS)
    pooled = HostOps(None, source=source, frames_kept=64)  # type: ignore[arg-type]
    fresh = HostOps(None)  # type: ignore[arg-type]
    fresh.frames = lambda limit, ahead, times: source.frames(limit)  # type: ignore[method-assign]
    found = [DetectionPass(FaceDetector(s3fd, StageTimes(), ops), ops, options, source, StageTimes(),
                           runner_label="torch/fp32", decode_ahead=4).run(None).boxes for ops in (pooled, fresh)]
    assert len(found[0]) == 20 and found[0] == found[1]
    # decode look-ahead (4 + the queue's and the worker's) and one detection batch of 4: far fewer than 20
    assert pooled.pool is not None and pooled.pool.made <= 12, pooled.pool.made
