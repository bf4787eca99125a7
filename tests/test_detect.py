import functools
import math

import numpy as np
import pytest
import torch
from torch import nn

from wav2lip_trt.detect import (
    S3FD_MEAN_RGB,
    FaceDetector,
    choose_faces,
    decode_candidates,
    detections_per_image,
    nms,
    preprocess,
)
from wav2lip_trt.runners.base import S3FD_INPUTS, S3FD_OUTPUTS
from wav2lip_trt.runners.torch_runner import TorchRunner
from wav2lip_trt.models.s3fd import head_map_sizes

from media import S3FD_BACKGROUND as BACKGROUND
from media import blank_s3fd_outputs as blank_outputs
from media import place_face as place
from media import random_s3fd_outputs


def sigmoid32(logit: float) -> np.float32:
    cls = torch.tensor([0.0, logit]).view(1, 2, 1, 1)
    return np.float32(torch.softmax(cls, dim=1)[0, 1, 0, 0].item())


def reference_candidates(outputs, batch):
    """The spec's decode, one candidate at a time (priors and loc as the original builds them)."""
    rows = []
    for level in range(6):
        cls = torch.nn.functional.softmax(outputs[2 * level], dim=1)
        reg = outputs[2 * level + 1]
        stride = 2 ** (level + 2)
        for _, h, w in zip(*np.where(cls[:, 1, :, :].numpy() > np.float32(0.05))):
            cx, cy = stride / 2 + w * stride, stride / 2 + h * stride
            priors = torch.Tensor([[cx, cy, stride * 4.0, stride * 4.0]]).view(1, 1, 4)
            loc = reg[:, :, h, w].contiguous().view(batch, 1, 4)
            boxes = torch.cat(
                (
                    priors[:, :, :2] + loc[:, :, :2] * 0.1 * priors[:, :, 2:],
                    priors[:, :, 2:] * torch.exp(loc[:, :, 2:] * 0.2),
                ),
                2,
            )
            boxes[:, :, :2] -= boxes[:, :, 2:] / 2
            boxes[:, :, 2:] += boxes[:, :, :2]
            rows.append(torch.cat([boxes[:, 0] * 1.0, cls[:, 1, h, w].unsqueeze(1)], 1).numpy())
    return np.array(rows) if rows else np.zeros((1, batch, 5))


random_outputs = functools.partial(random_s3fd_outputs, height=64, width=96)


def first_after_nms(dets: np.ndarray):
    if len(dets) == 0:
        return None
    x1, y1, x2, y2 = (int(v) for v in np.clip(dets[0], 0, None)[:4])
    return x1, y1, x2, y2


# --- preprocess ------------------------------------------------------------------------------


def test_map_sizes_match_spec_examples():
    assert head_map_sizes(240, 320) == [(60, 80), (30, 40), (15, 20), (11, 14), (6, 7), (3, 4)]
    assert head_map_sizes(250, 300) == [(62, 75), (31, 37), (15, 18), (11, 13), (6, 7), (3, 4)]


def test_preprocess_flips_to_rgb_and_subtracts_means():
    frames = np.array([[[[0, 1, 2], [255, 128, 7]]]], dtype=np.uint8)  # (1, 1, 2, 3) BGR
    x = preprocess(frames)
    assert x.dtype == torch.float32 and x.shape == (1, 3, 1, 2)
    mean_r, mean_g, mean_b = S3FD_MEAN_RGB
    assert x[0, :, 0, 0].tolist() == [2 - mean_r, 1 - mean_g, 0 - mean_b]
    assert x[0, :, 0, 1].tolist() == [7 - mean_r, 128 - mean_g, 255 - mean_b]


def test_preprocess_equals_original_expression():
    frames = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    original = (frames[..., ::-1] - np.array([104, 117, 123])).transpose(0, 3, 1, 2)
    expected = torch.from_numpy(original).float()
    assert torch.equal(preprocess(frames), expected)


def test_preprocess_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((1, 4, 4, 3), dtype=np.float32))


# --- decoding hand-made outputs --------------------------------------------------------------


def test_single_anchor_box_without_offsets():
    out = blank_outputs(1, 64, 64)
    place(out, level=1, image=0, h=5, w=7, logit=4.0)
    cands = decode_candidates(out)
    assert cands.dtype == np.float32 and cands.shape == (1, 1, 5)
    # stride 4: centre (2 + 7*4, 2 + 5*4) = (30, 22), anchor 16
    assert cands[0, 0, :4].tolist() == [22.0, 14.0, 38.0, 30.0]
    assert cands[0, 0, 4] == sigmoid32(4.0)
    assert choose_faces(out) == [(22, 14, 38, 30)]


@pytest.mark.parametrize("level", range(1, 7))
def test_anchor_centre_and_size_per_level(level):
    out = blank_outputs(1, 64, 64)
    h, w = head_map_sizes(64, 64)[level - 1]
    place(out, level, 0, h - 1, w - 1, logit=3.0)
    s = 2 ** (level + 1)
    cx, cy = s / 2 + (w - 1) * s, s / 2 + (h - 1) * s  # no correction for the fc6 offset
    expected = [cx - 2 * s, cy - 2 * s, cx + 2 * s, cy + 2 * s]
    assert decode_candidates(out)[0, 0, :4].tolist() == expected


def test_offsets_decode_with_variances():
    out = blank_outputs(1, 64, 64)
    place(out, 1, 0, 5, 7, logit=4.0, loc=(0.5, -0.25, 5 * math.log(2), -5 * math.log(2)))
    # cx = 30 + 0.5*0.1*16 = 30.8, cy = 22 - 0.25*0.1*16 = 21.6, W = 16*2 = 32, H = 16/2 = 8
    box = decode_candidates(out)[0, 0, :4]
    assert box == pytest.approx([14.8, 17.6, 46.8, 25.6], abs=1e-4)
    assert choose_faces(out) == [(14, 17, 46, 25)]


def test_negative_coordinates_clip_to_zero_and_truncate():
    out = blank_outputs(1, 64, 64)
    place(out, 3, 0, 0, 0, logit=4.0, loc=(0.3, 0.0, 0.0, 0.0))
    # stride 16 at (0, 0): centre (8 + 0.3*0.1*64, 8) = (9.92, 8), anchor 64
    box = decode_candidates(out)[0, 0, :4]
    assert box == pytest.approx([-22.08, -24.0, 41.92, 40.0], abs=1e-4)
    assert choose_faces(out) == [(0, 0, 41, 40)]


def test_candidate_threshold_is_strict_and_in_float32():
    # A row of logits stepping across sigmoid^-1(0.05) one float32 ulp at a time.
    d0 = np.float32(math.log(0.05 / 0.95))
    logits = (d0 + np.arange(-40, 40, dtype=np.float32) * np.spacing(d0)).astype(np.float32)
    out = blank_outputs(1, 64, 64)
    out[0][0, 0] = 0.0
    out[0][0, 1, 0, :16] = torch.from_numpy(logits[:16])
    out[0][0, 1, 1, :16] = torch.from_numpy(logits[16:32])
    out[0][0, 1, 2, :16] = torch.from_numpy(logits[32:48])
    out[0][0, 1, 3, :16] = torch.from_numpy(logits[48:64])
    out[0][0, 1, 4, :16] = torch.from_numpy(logits[64:80])
    scores = torch.softmax(out[0], dim=1)[0, 1].numpy()
    passing = scores > np.float32(0.05)
    assert passing.any() and (~passing[:5, :]).any()
    assert np.abs(scores[:5, :16] - np.float32(0.05)).min() <= 2 * np.spacing(np.float32(0.05))
    cands = decode_candidates(out)
    assert len(cands) == passing.sum()
    assert np.all(cands[:, 0, 4] > np.float32(0.05))
    assert choose_faces(out) == [None]


def test_face_threshold_is_strict():
    out = blank_outputs(1, 64, 64)
    place(out, 1, 0, 5, 7, logit=0.0)  # softmax of equal logits: exactly 0.5
    assert decode_candidates(out)[0, 0, 4] == np.float32(0.5)
    assert choose_faces(out) == [None]
    assert detections_per_image(out)[0].shape == (0, 5)
    place(out, 1, 0, 5, 7, logit=1e-6)
    assert sigmoid32(1e-6) > 0.5
    assert choose_faces(out) == [(22, 14, 38, 30)]


def test_highest_score_wins_and_nms_suppresses_overlaps():
    out = blank_outputs(1, 64, 64)
    place(out, 1, 0, 5, 7, logit=2.0)  # (22, 14, 38, 30)
    place(out, 1, 0, 5, 8, logit=3.0)  # (26, 14, 42, 30): IoU 13*17/(2*17*17 - 13*17) > 0.3
    place(out, 2, 0, 6, 6, logit=1.0)  # (36, 36, 68, 68): no overlap with the others
    dets = detections_per_image(out)[0]
    assert dets[:, :4].tolist() == [[26, 14, 42, 30], [36, 36, 68, 68]]
    assert dets[:, 4].tolist() == [sigmoid32(3.0), sigmoid32(1.0)]
    assert choose_faces(out) == [(26, 14, 42, 30)]


def test_no_detection_gives_zero_row_and_none():
    out = blank_outputs(3, 64, 64)
    cands = decode_candidates(out)
    assert cands.shape == (1, 3, 5) and not cands.any()
    assert choose_faces(out) == [None, None, None]
    assert [d.shape for d in detections_per_image(out)] == [(0, 5)] * 3


def test_batch_union_rows_carry_every_image():
    out = blank_outputs(2, 64, 64)
    place(out, 1, 0, 5, 7, logit=4.0)  # image 0 only
    place(out, 2, 1, 3, 3, logit=5.0)  # image 1 only
    place(out, 3, 0, 1, 1, logit=2.0)  # both images pass here -> the position appears twice
    place(out, 3, 1, 1, 1, logit=1.0, loc=(1.0, 0.0, 0.0, 0.0))
    cands = decode_candidates(out)
    assert cands.shape == (4, 2, 5)
    # row 0: level-1 position of image 0; image 1's column holds its own (background) box there
    assert cands[0, 0, 4] == sigmoid32(4.0)
    assert cands[0, 1, :4].tolist() == [22, 14, 38, 30] and cands[0, 1, 4] == sigmoid32(BACKGROUND)
    assert cands[1, 0, 4] == sigmoid32(BACKGROUND) and cands[1, 1, 4] == sigmoid32(5.0)
    assert np.array_equal(cands[2], cands[3])
    assert cands[2, 0, :4].tolist() == [-8, -8, 56, 56]  # stride 16 at (1, 1): centre 24, anchor 64
    assert cands[2, 1, :4] == pytest.approx([-1.6, -8, 62.4, 56], abs=1e-4)
    alone = [choose_faces([o[i : i + 1] for o in out])[0] for i in range(2)]
    assert choose_faces(out) == alone == [(22, 14, 38, 30), (12, 12, 44, 44)]


def test_nan_scores_take_the_full_nms_path():
    out = blank_outputs(2, 64, 64)
    place(out, 1, 0, 1, 1, logit=4.0)  # image 0 passes here, image 1 gets a NaN score row
    out[0][1, :, 1, 1] = float("nan")
    place(out, 2, 1, 6, 6, logit=4.0)  # image 1's real face, far from the NaN row
    cands = decode_candidates(out)
    assert np.isnan(cands[:, 1, 4]).any()
    expected = [first_after_nms(d) for d in detections_per_image(out)]
    assert choose_faces(out) == expected == [(0, 0, 14, 14), (36, 36, 68, 68)]


# --- NMS -------------------------------------------------------------------------------------


def dets32(*rows):
    return np.array(rows, dtype=np.float32)


def test_nms_uses_plus_one_areas():
    # 10x10 boxes (with +1) shifted by 5: IoU 50/150 = 0.33 -> suppressed.
    # Without the +1 the IoU would be 36/126 = 0.29 and both would survive.
    assert nms(dets32([0, 0, 9, 9, 0.9], [5, 0, 14, 9, 0.8])) == [0]
    assert nms(dets32([0, 0, 9, 9, 0.9], [6, 0, 15, 9, 0.8])) == [0, 1]


def test_nms_threshold_edges():
    # IoU = 10(10 - x) / (200 - 10(10 - x)): x = 5.38 -> 0.3004, x = 5.39 -> 0.2996
    assert nms(dets32([0, 0, 9, 9, 0.9], [5.38, 0, 14.38, 9, 0.8])) == [0]
    assert nms(dets32([0, 0, 9, 9, 0.9], [5.39, 0, 14.39, 9, 0.8])) == [0, 1]
    # IoU exactly 30 / 100 in float32 equals float32(0.3): kept (<=)
    assert nms(dets32([0, 0, 9, 9, 0.9], [0, 0, 2, 9, 0.8])) == [0, 1]


def test_nms_orders_by_score_and_suppresses_against_kept_only():
    d = dets32(
        [0, 0, 9, 9, 0.5],
        [2, 0, 11, 9, 0.9],  # best; suppresses row 0 (IoU 80/120)
        [50, 50, 59, 59, 0.7],
        [4, 0, 13, 9, 0.6],  # IoU with row 1 is 60/140 = 0.43 -> suppressed
    )
    assert nms(d) == [1, 2]
    assert nms(d[:0]) == []


# --- parity with the spec's per-candidate loop, and the argsort shortcut ---------------------


@pytest.mark.parametrize("batch", [1, 2, 3, 5])
def test_decode_matches_reference_loop_bitwise(batch):
    out = random_outputs(np.random.default_rng(batch), batch, height=48, width=80)
    expected = reference_candidates(out, batch)
    got = decode_candidates(out)
    assert len(got) > 100
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("seed", range(12))
def test_shortcut_equals_full_nms(seed):
    rng = np.random.default_rng(seed)
    batch = int(rng.integers(1, 5))
    quantum = [None, 0.5, 2.0][seed % 3]  # coarse logits make many exactly tied scores
    out = random_outputs(rng, batch, scale=float(rng.uniform(0.5, 4)), quantum=quantum)
    full = [first_after_nms(d) for d in detections_per_image(out)]
    assert choose_faces(out) == full


def test_shortcut_equals_full_nms_when_faces_are_rare():
    for seed in range(20):
        rng = np.random.default_rng(1000 + seed)
        out = random_outputs(rng, 3, scale=1.0)
        for i in range(0, len(out), 2):
            out[i][:, 1] -= 2.5
        full = [first_after_nms(d) for d in detections_per_image(out)]
        assert choose_faces(out) == full


# --- FaceDetector ----------------------------------------------------------------------------


FACES = {  # frame id -> (level, h, w, logit, loc)
    0: (1, 5, 7, 4.0, (0.0, 0.0, 0.0, 0.0)),
    1: None,
    2: (2, 3, 3, 5.0, (0.5, 0.5, 0.0, 0.0)),
    3: (3, 0, 0, 3.0, (0.3, 0.0, 0.0, 0.0)),
    4: (1, 10, 2, 2.0, (0.0, 0.0, 1.0, 1.0)),
    5: None,
    6: (4, 5, 5, 1.5, (0.0, 0.0, 0.0, 0.0)),
}


class FakeS3FD(nn.Module):
    """Returns hand-made maps; the frame id is read back from the (uniform) pixel value."""

    def forward(self, image: torch.Tensor):
        out = blank_outputs(image.shape[0], image.shape[2], image.shape[3])
        for b in range(image.shape[0]):
            face = FACES[int(image[b, 0, 0, 0]) + S3FD_MEAN_RGB[0]]
            if face is not None:
                place(out, face[0], b, *face[1:])
        return tuple(out)


def frames_for(ids):
    return np.stack([np.full((64, 64, 3), i, dtype=np.uint8) for i in ids])


def expected_faces(ids):
    result = []
    for i in ids:
        out = blank_outputs(1, 64, 64)
        if FACES[i] is not None:
            place(out, FACES[i][0], 0, *FACES[i][1:])
        result.append(choose_faces(out)[0])
    return result


def torch_runner():
    return TorchRunner(FakeS3FD(), S3FD_INPUTS, S3FD_OUTPUTS)


class ShuffledOutputs:
    """A runner whose output dict is not in network order (the detector must order by name)."""

    def __init__(self, runner):
        self.runner = runner

    def infer(self, feed):
        return dict(reversed(list(self.runner.infer(feed).items())))


def test_face_detector_with_torch_runner():
    ids = list(range(7))
    faces = FaceDetector(torch_runner()).detect(frames_for(ids))
    assert faces == expected_faces(ids)
    assert faces[0] == (22, 14, 38, 30) and faces[1] is None and faces[3] == (0, 0, 41, 40)


def test_face_detector_orders_outputs_by_name():
    ids = [0, 2, 4]
    detector = FaceDetector(ShuffledOutputs(torch_runner()))
    assert detector.detect(frames_for(ids)) == expected_faces(ids)


class OutOfMemoryAbove:
    def __init__(self, runner, limit, message="CUDA out of memory. Tried to allocate 2.00 GiB"):
        self.runner, self.limit, self.message = runner, limit, message
        self.device = torch.device("cpu")
        self.batches: list[int] = []

    def infer(self, feed):
        batch = feed["image"].shape[0]
        self.batches.append(batch)
        if batch > self.limit:
            raise RuntimeError(self.message)
        return self.runner.infer(feed)


def test_out_of_memory_retries_in_halves():
    ids = [0, 1, 2, 3, 4, 5, 6]
    runner = OutOfMemoryAbove(torch_runner(), limit=2)
    detector = FaceDetector(runner)
    assert detector.detect(frames_for(ids)) == expected_faces(ids)
    assert runner.batches == [7, 4, 2, 2, 2, 1]
    assert detector.max_batch == 2
    runner.batches.clear()
    assert detector.detect(frames_for(ids[:3])) == expected_faces(ids[:3])
    assert runner.batches == [2, 1]


def test_out_of_memory_at_batch_one_and_other_errors_are_raised():
    with pytest.raises(RuntimeError, match="out of memory"):
        FaceDetector(OutOfMemoryAbove(torch_runner(), limit=0)).detect(frames_for([0, 1]))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        FaceDetector(OutOfMemoryAbove(torch_runner(), limit=1, message="shape mismatch")).detect(
            frames_for([0, 1])
        )


def test_empty_batch():
    assert FaceDetector(torch_runner()).detect(np.zeros((0, 64, 64, 3), np.uint8)) == []
