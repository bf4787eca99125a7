"""The device stages (kernels next to the networks) against the exact host stages, on CPU tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wav2lip_trt.audio import MelChunks, melspectrogram
from wav2lip_trt.checkpoints import load_s3fd, load_wav2lip
from wav2lip_trt.decode import OpenCVDecoder
from wav2lip_trt.detect import FaceDetector
from wav2lip_trt.errors import InputError
from wav2lip_trt.execution import DeviceContext
from wav2lip_trt.detection.stage import DetectionPass
from wav2lip_trt.frame_ops import DeviceOps, HostOps, frame_ops_for
from wav2lip_trt.options import InferenceOptions
from wav2lip_trt.pipeline import Detection, face_items, generate
from wav2lip_trt.video import FaceSource
from wav2lip_trt.runners.base import S3FD_INPUTS, S3FD_OUTPUTS, WAV2LIP_INPUTS, WAV2LIP_OUTPUTS
from wav2lip_trt.runners.torch_runner import TorchRunner
from wav2lip_trt.samples import speechlike_audio, talking_face_frames, write_video
from wav2lip_trt.stages import StageTimes

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(checkpoints):
    chunks = MelChunks(melspectrogram(speechlike_audio(1.0, seed=7)), 25.0)
    frames = np.stack(list(talking_face_frames(6, 128, 96, seed=2)))
    s3fd = TorchRunner(load_s3fd(checkpoints[1]), S3FD_INPUTS, S3FD_OUTPUTS)
    wav2lip = TorchRunner(load_wav2lip(checkpoints[0]), WAV2LIP_INPUTS, WAV2LIP_OUTPUTS)
    return chunks, frames, s3fd, wav2lip


def test_ops_choice_follows_the_device(setup, tmp_path) -> None:
    chunks, frames = setup[0], setup[1]
    source = FaceSource(write_video(tmp_path / "v.mp4", list(frames), 25.0))
    assert isinstance(frame_ops_for(DeviceContext(CPU), chunks, source), HostOps)
    with pytest.raises(InputError, match="--decoder dali needs --device cuda"):
        frame_ops_for(DeviceContext(CPU), chunks, source, decoder="dali")


def test_device_frames_through_the_whole_pipeline(setup, checkpoints, tmp_path) -> None:
    """Frames as tensors from the decoder, kernels for every stage: the GPU path's plumbing, on CPU."""
    chunks, _, s3fd, wav2lip = setup
    video = write_video(tmp_path / "face.mp4", talking_face_frames(12, 128, 96, seed=2), 25.0)
    source = FaceSource(video)
    options = InferenceOptions(checkpoint_path=checkpoints[0], face=video, audio=video, wav2lip_batch_size=8,
                               face_det_batch_size=4)
    host = HostOps(chunks, source=source)
    device = DeviceOps(chunks, CPU, decoder=OpenCVDecoder(source, device=CPU, batch=4))
    outputs = []
    for ops in (host, device):
        pass_ = DetectionPass(FaceDetector(s3fd, StageTimes(), ops), ops, options, source, StageTimes(), runner_label="torch/fp32")
        detection = Detection(pass_.run(12).boxes, options, source)
        items = face_items(source, len(chunks), options, detection, ops)
        seen: list = []
        boxes = (seen.append((it.index, it.box)) or it for it in items)
        batches = list(generate(boxes, ops, wav2lip, 8, None))
        outputs.append((seen, [f for batch in batches for f in batch.host_frames()]))
        assert [b.first_index for b in batches] == list(range(0, len(chunks), 8))
    (host_boxes, host_frames), (device_boxes, device_frames) = outputs
    assert len(host_frames) == len(device_frames) == len(chunks) > 12  # the 12-frame video loops
    assert host_boxes == device_boxes
    host_out = [(None, None, f) for f in host_frames]
    device_out = [(None, None, f) for f in device_frames]
    diff = np.abs(np.stack([f for *_, f in device_out]).astype(int) - np.stack([f for *_, f in host_out]))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_device_detection_equals_host(setup) -> None:
    chunks, frames, s3fd, _ = setup
    times = StageTimes()
    host = HostOps(chunks).detect(s3fd, frames, times)
    device = DeviceOps(chunks, CPU).detect(s3fd, frames, times)
    assert device == host and all(b is not None for b in host)
    assert {r["stage"] for r in times.rows()} == {"detect", "postprocess"}


def test_device_lip_sync_within_one_level_of_host(setup) -> None:
    chunks, frames, _, wav2lip = setup
    boxes = [(10, 80, 20, 110), (0, 96, 0, 128), (30, 50, 40, 45), (5, 70, 60, 127), (12, 81, 19, 111), (1, 2, 3, 4)]
    indices = [0, 3, 7, 8, 20, len(chunks) - 1]
    host_frames, device_frames = [f.copy() for f in frames], [f.copy() for f in frames]
    host_done, host_pred = HostOps(chunks).lip_sync(wav2lip, host_frames, boxes, indices, StageTimes(), keep_pred=True)
    device_done, device_pred = DeviceOps(chunks, CPU).lip_sync(wav2lip, device_frames, boxes, indices, StageTimes(),
                                                               keep_pred=True)
    assert host_pred.shape == device_pred.shape == (6, 3, 96, 96)
    assert (device_pred - host_pred).abs().max() < 1e-4
    host_out, device_out = np.stack(host_done.host_frames()), np.stack(device_done.host_frames())
    diff = np.abs(device_out.astype(int) - host_out)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert not np.array_equal(host_out, frames)


def test_frames_without_a_box_pass_through_and_keep_their_place(setup) -> None:
    chunks, frames, _, wav2lip = setup
    boxes = [(10, 80, 20, 110), None, (5, 70, 60, 127), None]
    for ops in (HostOps(chunks), DeviceOps(chunks, CPU)):
        given = [f.copy() for f in frames[:4]]
        done, pred = ops.lip_sync(wav2lip, given if isinstance(ops, HostOps) else [torch.from_numpy(f) for f in given],
                                  boxes, [0, 1, 2, 3], StageTimes(), keep_pred=True)
        out = np.stack(done.host_frames())
        assert pred.shape == (2, 3, 96, 96) and done.first_index == 0
        np.testing.assert_array_equal(out[[1, 3]], frames[[1, 3]])
        assert not np.array_equal(out[0], frames[0]) and not np.array_equal(out[2], frames[2])
        np.testing.assert_array_equal(out[0][:10], frames[0][:10])  # outside the box


def test_feather_blend_softens_only_the_box_edges(setup) -> None:
    chunks, frames, _, wav2lip = setup
    box = (10, 90, 20, 120)
    hard, soft = [frames[0].copy()], [frames[0].copy()]
    HostOps(chunks).lip_sync(wav2lip, hard, [box], [0], StageTimes())
    HostOps(chunks, blend="feather").lip_sync(wav2lip, soft, [box], [0], StageTimes())
    hard, soft, original = hard[0].astype(int), soft[0].astype(int), frames[0].astype(int)
    outside = np.ones(original.shape[:2], bool)
    outside[10:90, 20:120] = False
    np.testing.assert_array_equal(soft[outside], original[outside])
    np.testing.assert_array_equal(soft[40:60, 60:80], hard[40:60, 60:80])  # the centre is the prediction
    edge = np.zeros_like(outside)
    edge[10:90, 20] = edge[10:90, 119] = edge[10, 20:120] = edge[89, 20:120] = True
    assert np.abs(soft[edge] - original[edge]).mean() < 0.5 * np.abs(hard[edge] - original[edge]).mean()


def test_odd_counts_with_two_frame_batches_fit_the_host_buffers(setup) -> None:
    """A budget that allows 2 frames per batch ends an odd count in a batch of 3 (no lone face): the pool holds it."""
    from wav2lip_trt.execution import plan_batches
    from wav2lip_trt.pipeline import FaceItem

    chunks, frames, _, wav2lip = setup
    plan = plan_batches(1280, 720, budget_mb=1, wav2lip_batch_size=128)  # a budget that allows 2 frames
    assert plan.generator_batch == 2 and plan.largest_batch == 3
    ops = DeviceOps(chunks, CPU, batch_frames=plan.largest_batch, buffers=plan.buffers, size=(96, 128))
    items = [FaceItem(i, i, torch.from_numpy(frames[i].copy()), (10, 80, 20, 110)) for i in range(5)]
    batches = list(generate(items, ops, wav2lip, plan.generator_batch, None, reference_batch=128, total=5))
    assert [len(b.host_frames()) for b in batches] == [3, 2]
    for b in batches:
        b.release()
