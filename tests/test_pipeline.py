"""The streaming pipeline against the original algorithm (wav2lip_trt.reference), array for array."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from wav2lip_trt.audio import MelChunks, load_audio, melspectrogram
from wav2lip_trt.checkpoints import load_s3fd, load_wav2lip
from wav2lip_trt.detect import FaceDetector
from wav2lip_trt.errors import NoFaceError
from wav2lip_trt.frame_ops import HostOps
from wav2lip_trt.options import InferenceOptions
from wav2lip_trt.detection.stage import DetectionPass
from wav2lip_trt.stages import StageTimes
from wav2lip_trt.pipeline import Detection, face_items, generate
from wav2lip_trt.session import run_inference
from wav2lip_trt.reference import run_reference
from wav2lip_trt.runners.base import S3FD_INPUTS, S3FD_OUTPUTS, WAV2LIP_INPUTS, WAV2LIP_OUTPUTS
from wav2lip_trt.runners.torch_runner import TorchRunner
from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav
from wav2lip_trt.video import FaceSource

from media import decode_frames, probe


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pipeline")
    frames = list(talking_face_frames(30, 128, 96, seed=2))
    return {
        "video": write_video(d / "face.mp4", frames, 25.0),
        "video2997": write_video(d / "face2997.mp4", frames[:20], 30000 / 1001),
        "image": Path(cv2.imwrite(str(d / "face.png"), frames[0]) and d / "face.png"),
        "long": write_wav(d / "long.wav", float_to_int16(speechlike_audio(1.6, seed=1)), 16000),
        "short": write_wav(d / "short.wav", float_to_int16(speechlike_audio(0.7, seed=2)), 16000),
        "dir": d,
    }


def options_for(media, checkpoints, tmp_path: Path, **kw) -> InferenceOptions:
    wav2lip, s3fd = checkpoints
    base = dict(checkpoint_path=wav2lip, s3fd_checkpoint=s3fd, face=media["video"], audio=media["long"],
                outfile=tmp_path / "out.mp4", dump_intermediates=tmp_path / "dump")
    base.update(kw)
    return InferenceOptions(**base)


def assert_matches_reference(options: InferenceOptions) -> dict[str, np.ndarray]:
    result = run_inference(options)
    dump = {p.stem: np.load(p) for p in Path(options.dump_intermediates).glob("*.npy")}
    ref = run_reference(replace(options, outfile=Path(options.outfile).with_name("ref.mp4")), write_video=False)
    assert dump["mel"].dtype == np.float32 and dump["mel"].shape == ref.mel.shape
    np.testing.assert_array_equal(dump["mel"], ref.mel)
    np.testing.assert_array_equal(dump["mel_chunks"], np.stack(ref.mel_chunks))
    np.testing.assert_array_equal(dump["boxes"], np.array(ref.boxes, dtype=np.int64))
    if options.box[0] == -1:
        np.testing.assert_array_equal(dump["det_boxes"], np.array(ref.det_boxes, dtype=np.int64))
    else:
        assert "det_boxes" not in dump
    np.testing.assert_array_equal(dump["pred"], np.stack(ref.preds))
    np.testing.assert_array_equal(dump["frames"], np.stack(ref.frames))
    assert result.frames == len(ref.mel_chunks) == len(dump["frames"])
    assert dump["frames"].dtype == np.uint8 and dump["pred"].dtype == np.float32
    return dump


def test_video_shorter_than_audio_loops_and_matches(media, checkpoints, tmp_path) -> None:
    dump = assert_matches_reference(options_for(media, checkpoints, tmp_path))
    assert len(dump["frames"]) > 30  # 1.6 s of audio over a 30-frame video: frames wrap around
    assert len(dump["det_boxes"]) == 30
    np.testing.assert_array_equal(dump["boxes"][30:], dump["boxes"][: len(dump["boxes"]) - 30])


def test_truncated_video_with_options_matches(media, checkpoints, tmp_path) -> None:
    options = options_for(media, checkpoints, tmp_path, audio=media["short"], nosmooth=True, pads=(0, 20, 5, -3),
                          face_det_batch_size=4, wav2lip_batch_size=5)
    dump = assert_matches_reference(options)
    assert len(dump["det_boxes"]) == len(dump["frames"]) < 30


def test_still_image_matches(media, checkpoints, tmp_path) -> None:
    dump = assert_matches_reference(options_for(media, checkpoints, tmp_path, face=media["image"], fps=20.0))
    assert len(dump["det_boxes"]) == 1 and (dump["boxes"] == dump["boxes"][0]).all()


def test_fixed_box_with_video_transforms_matches(media, checkpoints, tmp_path) -> None:
    options = options_for(media, checkpoints, tmp_path, box=(10, 60, 5, 40), resize_factor=2, rotate=True,
                          crop=(2, -1, 0, 45), audio=media["short"])
    dump = assert_matches_reference(options)
    assert dump["frames"].shape[1:] == (62, 45, 3)


def test_2997_fps_static_video_matches(media, checkpoints, tmp_path) -> None:
    options = options_for(media, checkpoints, tmp_path, face=media["video2997"], static=True)
    dump = assert_matches_reference(options)
    assert len(dump["det_boxes"]) == 1
    assert probe(options.outfile)["video"]["fps"] == pytest.approx(30000 / 1001)


def test_frames_folder_equals_video(media, checkpoints, tmp_path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(decode_frames(media["video"])):
        cv2.imwrite(str(folder / f"img{i}.png"), frame)
    a = options_for(media, checkpoints, tmp_path / "a", audio=media["short"])
    b = options_for(media, checkpoints, tmp_path / "b", audio=media["short"], face=folder,
                    save_frames=tmp_path / "saved")
    run_inference(a)
    run_inference(b)
    for name in ("pred", "frames", "boxes", "det_boxes"):
        np.testing.assert_array_equal(np.load(tmp_path / "a/dump" / f"{name}.npy"), np.load(tmp_path / "b/dump" / f"{name}.npy"))
    saved = sorted((tmp_path / "saved").iterdir())
    frames = np.load(tmp_path / "b/dump/frames.npy")
    assert len(saved) == len(frames)
    np.testing.assert_array_equal(cv2.imread(str(saved[-1])), frames[-1])


class DarkFramesHaveNoFace(nn.Module):
    """The real (random-weight) S3FD, with the face logit pushed down on dark frames."""

    def __init__(self, s3fd: nn.Module) -> None:
        super().__init__()
        self.s3fd = s3fd

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = list(self.s3fd(x))
        dark = (x.mean(dim=(1, 2, 3)) < -80).float()[:, None, None]
        for i in range(0, len(outs), 2):
            outs[i] = torch.stack([outs[i][:, 0], outs[i][:, 1] - 1e4 * dark], dim=1)
        return outs


@pytest.fixture(scope="module")
def gappy(media, checkpoints):
    frames = list(talking_face_frames(12, 128, 96, seed=5))
    for i in (0, 4, 5, 11):
        frames[i] = np.zeros_like(frames[i])
    video = write_video(media["dir"] / "gappy.mp4", frames, 25.0)
    detector = FaceDetector(TorchRunner(DarkFramesHaveNoFace(load_s3fd(checkpoints[1])), S3FD_INPUTS, S3FD_OUTPUTS))
    return video, detector


def items_for(media, checkpoints, gappy, policy: str):
    video, detector = gappy
    options = options_for(media, checkpoints, Path("unused"), face=video, on_missing_face=policy, nosmooth=True)
    source = FaceSource(video)
    ops = HostOps(None, source=source)  # type: ignore[arg-type]  (no generation here)
    raw = DetectionPass(detector, ops, options, source, StageTimes(), runner_label="torch/fp32").run(12).boxes
    return source, list(face_items(source, 12, options, Detection(raw, options, source), ops))


def test_missing_face_error_names_frame_and_time(media, checkpoints, gappy) -> None:
    with pytest.raises(NoFaceError, match=r"gappy\.mp4: no face detected in frame 0 \(t=0\.000 s\)"):
        items_for(media, checkpoints, gappy, "error")


def test_missing_face_skip_and_previous(media, checkpoints, gappy) -> None:
    _, skipped = items_for(media, checkpoints, gappy, "skip")
    assert [it.box is None for it in skipped] == [i in (0, 4, 5, 11) for i in range(12)]
    _, previous = items_for(media, checkpoints, gappy, "previous")
    assert previous[0].box is None  # nothing to reuse yet: passes through
    assert previous[4].box == previous[5].box == previous[3].box
    assert previous[11].box == previous[10].box
    assert [it.box for it in previous if it.index not in (0, 4, 5, 11)] == [it.box for it in skipped if it.box]


def test_skip_passes_frames_through_unchanged(media, checkpoints, gappy, tmp_path) -> None:
    video, detector = gappy
    options = options_for(media, checkpoints, tmp_path, face=video, on_missing_face="skip", audio=media["short"])
    source = FaceSource(video)
    chunks = MelChunks(melspectrogram(load_audio(media["short"])), 25.0)
    ops = HostOps(chunks, source=source)
    raw = DetectionPass(detector, ops, options, source, StageTimes(), runner_label="torch/fp32").run(12).boxes
    items = face_items(source, 12, options, Detection(raw, options, source), ops)
    runner = TorchRunner(load_wav2lip(checkpoints[0]), WAV2LIP_INPUTS, WAV2LIP_OUTPUTS)
    out = [(batch.first_index + k, frame) for batch in generate(items, ops, runner, 4, None)
           for k, frame in enumerate(batch.host_frames())]
    originals = decode_frames(video)
    assert [index for index, _ in out] == list(range(12))
    for index, frame in out:
        if index in (0, 4, 5, 11):
            np.testing.assert_array_equal(frame, originals[index])
        else:
            assert not np.array_equal(frame, originals[index])


def test_boxes_beyond_the_frame_are_smoothed_like_the_original(media, checkpoints, tmp_path) -> None:
    # With these frames the random S3FD places some boxes past the frame edge; after pads they are
    # empty, and the original's smoothing repairs them, so the run must match it exactly.
    video = write_video(tmp_path / "edge.mp4", talking_face_frames(30, 128, 96, seed=0), 25.0)
    dump = assert_matches_reference(options_for(media, checkpoints, tmp_path, face=video, audio=media["short"]))
    assert (dump["det_boxes"][:, 1] >= 96).any() or (dump["det_boxes"][:, 0] >= 128).any()


def test_box_still_empty_after_smoothing_follows_the_policy(media, checkpoints, tmp_path) -> None:
    video = write_video(tmp_path / "outside.mp4", talking_face_frames(30, 128, 96, seed=3), 25.0)
    with pytest.raises(NoFaceError, match=r"outside\.mp4: the face box .* lies outside the frame in frame \d+"):
        run_inference(options_for(media, checkpoints, tmp_path, face=video, audio=media["long"]))
    result = run_inference(options_for(media, checkpoints, tmp_path, face=video, audio=media["long"],
                                       on_missing_face="skip"))
    boxes = np.load(tmp_path / "dump" / "boxes.npy")
    assert result.frames == len(boxes) and (boxes == -1).all(axis=1).any()
