"""Face tracks for LSE: run_pipeline.py's NMS, linking, interpolation, smoothing and crops, and the tracked path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import signal
from scipy.interpolate import interp1d

from wav2lip_trt.checkpoints import load_s3fd
from wav2lip_trt.detect import detections_per_image, preprocess
from wav2lip_trt.errors import NoFaceError
from wav2lip_trt.samples import write_talking_clip, write_video
from wav2lip_trt.random_weights import write_random_scoring_checkpoints
from wav2lip_trt.scoring.score import ScoreOptions, score_video
from wav2lip_trt.scoring.tracking import (TrackOptions, crop_face, detect_all_faces, link_tracks, nms_no_plus_one,
                                          smooth_track)

pytest.importorskip("python_speech_features")


# ------------------------------------------------ run_pipeline.py / box_utils.py, transcribed


def ref_nms(dets, thresh):
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1) * np.maximum(0.0, yy2 - yy1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return np.array(keep).astype(np.intp)


def ref_iou(boxA, boxB):
    xA, yA = max(boxA[0], boxB[0]), max(boxA[1], boxB[1])
    xB, yB = min(boxA[2], boxB[2]), min(boxA[3], boxB[3])
    interArea = max(0, xB - xA) * max(0, yB - yA)
    boxAArea = (boxA[2] - boxA[0]) * (boxA[3] - boxA[1])
    boxBArea = (boxB[2] - boxB[0]) * (boxB[3] - boxB[1])
    return interArea / float(boxAArea + boxBArea - interArea)


def ref_track_shot(opt, scenefaces):
    iouThres = 0.5
    tracks = []
    while True:
        track = []
        for framefaces in scenefaces:
            for face in framefaces:
                if track == []:
                    track.append(face)
                    framefaces.remove(face)
                elif face["frame"] - track[-1]["frame"] <= opt.num_failed_det:
                    iou = ref_iou(face["bbox"], track[-1]["bbox"])
                    if iou > iouThres:
                        track.append(face)
                        framefaces.remove(face)
                        continue
                else:
                    break
        if track == []:
            break
        elif len(track) > opt.min_track:
            framenum = np.array([f["frame"] for f in track])
            bboxes = np.array([np.array(f["bbox"]) for f in track])
            frame_i = np.arange(framenum[0], framenum[-1] + 1)
            bboxes_i = np.stack([interp1d(framenum, bboxes[:, ij])(frame_i) for ij in range(4)], axis=1)
            if max(np.mean(bboxes_i[:, 2] - bboxes_i[:, 0]), np.mean(bboxes_i[:, 3] - bboxes_i[:, 1])) > opt.min_face_size:
                tracks.append({"frame": frame_i, "bbox": bboxes_i})
    return tracks


def ref_crop(image, det_s, det_x, det_y, cs):
    bs = det_s
    bsi = int(bs * (1 + 2 * cs))
    frame = np.pad(image, ((bsi, bsi), (bsi, bsi), (0, 0)), "constant", constant_values=(110, 110))
    my, mx = det_y + bsi, det_x + bsi
    face = frame[int(my - bs):int(my + bs * (1 + 2 * cs)), int(mx - bs * (1 + cs)):int(mx + bs * (1 + cs))]
    import cv2

    return cv2.resize(face, (224, 224))


# ------------------------------------------------ tests


@pytest.mark.parametrize("seed", range(4))
def test_final_nms_is_syncnet_pythons(seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (30, 2))
    dets = np.concatenate([xy, xy + rng.uniform(5, 60, (30, 2)), rng.uniform(0.9, 1, (30, 1))], axis=1)
    np.testing.assert_array_equal(nms_no_plus_one(dets, 0.1), ref_nms(dets, 0.1))


def random_detections(seed: int, frames: int = 90) -> list[np.ndarray]:
    """Two faces wandering (one vanishing for a while, one leaving for good) and some clutter."""
    rng = np.random.default_rng(seed)
    out = []
    a = np.array([20.0, 20, 140, 160])
    b = np.array([200.0, 40, 300, 170])
    for f in range(frames):
        a += np.r_[rng.normal(0, 2, 2), rng.normal(0, 2, 2)]
        b += np.r_[rng.normal(0, 3, 2), rng.normal(0, 3, 2)]
        dets = []
        if not 30 <= f < 40 or seed % 2:
            dets.append(np.r_[a, 0.99])
        if f < 60 and rng.random() > 0.2:
            dets.append(np.r_[b, 0.95])
        if rng.random() < 0.1:
            c = rng.uniform(0, 300, 2)
            dets.append(np.r_[c, c + 30, 0.93])
        order = rng.permutation(len(dets))
        out.append(np.array([dets[i] for i in order]).reshape(-1, 5))
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("min_track", "num_failed_det", "min_face_size"), [(10, 25, 20.0), (50, 5, 100.0)])
def test_linking_and_interpolation_are_track_shots(seed, min_track, num_failed_det, min_face_size):
    detections = random_detections(seed)
    options = TrackOptions(min_track=min_track, num_failed_det=num_failed_det, min_face_size=min_face_size)
    got = link_tracks(detections, options)
    scene = [[{"frame": f, "bbox": d[:-1].tolist(), "conf": d[-1]} for d in dets] for f, dets in enumerate(detections)]
    want = ref_track_shot(options, scene)
    assert len(got) == len(want)
    for (frames, boxes), track in zip(got, want):
        np.testing.assert_array_equal(frames, track["frame"])
        np.testing.assert_allclose(boxes, track["bbox"], rtol=1e-12)


def test_smoothing_and_crops_are_crop_videos():
    rng = np.random.default_rng(3)
    frames = np.arange(5, 40)
    boxes = np.stack([np.linspace(30, 50, 35), np.linspace(20, 28, 35), np.linspace(110, 125, 35),
                      np.linspace(115, 130, 35)], axis=1) + rng.normal(0, 2, (35, 4))
    track = smooth_track(frames, boxes)
    s = [max(d[3] - d[1], d[2] - d[0]) / 2 for d in boxes]
    x = [(d[0] + d[2]) / 2 for d in boxes]
    y = [(d[1] + d[3]) / 2 for d in boxes]
    np.testing.assert_array_equal(track.size, signal.medfilt(s, kernel_size=13))
    np.testing.assert_array_equal(track.centre_x, signal.medfilt(x, kernel_size=13))
    np.testing.assert_array_equal(track.centre_y, signal.medfilt(y, kernel_size=13))
    image = rng.integers(0, 255, (144, 176, 3), dtype=np.uint8)
    for k in (0, 6, 20, 34):
        got = crop_face(image, track.size[k], track.centre_x[k], track.centre_y[k], 0.4)
        np.testing.assert_array_equal(got, ref_crop(image, track.size[k], track.centre_x[k], track.centre_y[k], 0.4))
        assert got.shape == (224, 224, 3)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, checkpoints):
    folder = tmp_path_factory.mktemp("track-ckpt")
    expert, syncnet, disc = write_random_scoring_checkpoints(folder, seed=1)
    return {"expert": expert, "syncnet": syncnet, "disc": disc, "s3fd": checkpoints[1]}  # conftest's s3fd.pth


@pytest.fixture(scope="module")
def talking(tmp_path_factory):
    """A 160x128 talking-face clip with its own audio track, 1.6 s."""
    folder = tmp_path_factory.mktemp("track-clip")
    video, wav = write_talking_clip(folder, seconds=1.6, width=160, height=128, seed=4)
    return write_video(folder / "talking.mp4", _frames(video), 25.0, audio=wav), wav


def _frames(video):
    import cv2

    cap = cv2.VideoCapture(str(video))
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        yield frame
    cap.release()


def test_detection_at_quarter_scale_maps_boxes_to_the_full_frame(ckpts):
    s3fd = load_s3fd(ckpts["s3fd"])
    frames = np.random.default_rng(0).integers(0, 255, (2, 160, 200, 3), dtype=np.uint8)
    options = TrackOptions(facedet_scale=0.25, conf_th=0.5)
    got = detect_all_faces(s3fd, frames, options)
    import cv2

    small = np.stack([cv2.resize(f, (50, 40)) for f in frames])
    with torch.no_grad():
        raw = detections_per_image([o for o in s3fd(preprocess(small))])
    for dets, ref in zip(got, raw):
        ref = ref[ref[:, 4] > 0.5].astype(np.float64)
        ref = ref[ref_nms(ref, 0.1)] if len(ref) else ref
        np.testing.assert_allclose(dets, ref * np.array([4, 4, 4, 4, 1.0]))


def face_box(frame_index: int) -> np.ndarray:
    return np.array([[45.0, 40.0, 116.0, 88.0, 0.99]]) + np.array([[0.2 * frame_index, 0, 0.2 * frame_index, 0, 0]])


def test_tracked_path_scores_each_track(ckpts, talking, monkeypatch, tmp_path):
    video, _ = talking
    seen = []

    def fake_detect(s3fd, frames, options, device="cpu"):
        start = len(seen)
        seen.extend(range(start, start + len(frames)))
        return [face_box(i) if i >= 3 else np.zeros((0, 5)) for i in range(start, start + len(frames))]

    monkeypatch.setattr("wav2lip_trt.scoring.score.detect_all_faces", fake_detect)
    options = ScoreOptions(video=video, syncnet_checkpoint=ckpts["syncnet"], s3fd_checkpoint=ckpts["s3fd"],
                           expert_checkpoint=ckpts["expert"], device="cpu",
                           tracking=TrackOptions(min_track=20, min_face_size=40))
    report = score_video(options)
    assert report.frames == 40 and len(report.clips) == 1
    clip = report.clips[0]
    assert (clip.start_frame, clip.end_frame) == (3, 39)
    assert clip.lse.windows == 37 - 5 and len(clip.lse.framewise_confidence) == 32
    data = json.loads(json.dumps(report.to_json()))
    assert data["tracks"][0]["start_frame"] == 3 and data["tracks"][0]["end_frame"] == 39
    assert set(data["tracks"][0]["lse"]) >= {"av_offset", "min_dist", "confidence", "framewise_confidence", "dists"}
    assert data["lse"] == {"min_dist": clip.lse.min_dist, "confidence": clip.lse.confidence}
    assert len(data["tracks"][0]["expert"]["similarity"]) == 34 - 4  # 1.48 s of audio: 34 mel chunks, as inference.py counts


def test_no_face_track_is_a_user_error(ckpts, talking, monkeypatch):
    video, _ = talking
    monkeypatch.setattr("wav2lip_trt.scoring.score.detect_all_faces",
                        lambda s3fd, frames, options, device="cpu": [np.zeros((0, 5))] * len(frames))
    options = ScoreOptions(video=video, syncnet_checkpoint=ckpts["syncnet"], s3fd_checkpoint=ckpts["s3fd"],
                           device="cpu", tracking=TrackOptions(min_track=20, min_face_size=40))
    with pytest.raises(NoFaceError, match="no face track to score.*in 0 of 40 frames"):
        score_video(options)
