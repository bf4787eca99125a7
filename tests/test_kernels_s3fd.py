"""S3FD pre/post-processing kernels against wav2lip_trt.detect (the reference pipeline's numbers).

``impl="triton"`` on CPU tensors runs the kernels in Triton's interpreter, so every test here
checks the Triton kernel and its torch reference on this machine.
"""

from __future__ import annotations

import functools

import math

import numpy as np
import pytest
import torch

from wav2lip_trt.detect import choose_faces, decode_candidates, detections_per_image, nms, preprocess
from wav2lip_trt.errors import InputError
from wav2lip_trt.kernels import (
    choose_faces_device,
    detections_device,
    nms_indices,
    s3fd_preprocess,
)
from wav2lip_trt.models.s3fd import head_map_sizes

from media import blank_s3fd_outputs as blank_outputs
from media import place_face as place
from media import random_s3fd_outputs

pytest.importorskip("triton")

IMPLS = ["torch", "triton"]


random_outputs = functools.partial(random_s3fd_outputs, height=48, width=80)


def top_boxes(outputs) -> list[set]:
    """Per image: the truncated boxes of every candidate holding the reference's top score."""
    cands = decode_candidates(outputs)
    result = []
    for i in range(cands.shape[1]):
        scores = cands[:, i, 4]
        top = cands[scores == scores.max(), i, :4] if scores.max() > 0.5 else np.zeros((0, 4))
        result.append({tuple(int(v) for v in np.clip(row, 0, None)) for row in top})
    return result


def assert_same_choice(outputs, got) -> None:
    """Identical to detect.choose_faces; where the top score is tied, one of the tied boxes."""
    expected = choose_faces(outputs)
    for i, (g, e, tied) in enumerate(zip(got, expected, top_boxes(outputs))):
        if len(tied) <= 1:
            assert g == e, f"image {i}: {g} != {e}"
        else:
            assert g in tied, f"image {i}: {g} is not one of the tied top boxes {tied}"


# --- pre-processing --------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 7, 5), (3, 33, 47)])
def test_preprocess_equals_reference(impl, shape) -> None:
    frames = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    expected = preprocess(frames)
    got = s3fd_preprocess(torch.from_numpy(frames), impl=impl)
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, expected)
    half = s3fd_preprocess(torch.from_numpy(frames), torch.float16, impl=impl)
    assert half.dtype == torch.float16 and torch.equal(half.float(), expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_preprocess_writes_into_given_buffer_and_extremes(impl) -> None:
    frames = np.zeros((2, 4, 6, 3), dtype=np.uint8)
    frames[1] = 255
    out = torch.full((2, 3, 4, 6), 7.0)
    assert s3fd_preprocess(torch.from_numpy(frames), out=out, impl=impl) is out
    assert out[0, :, 0, 0].tolist() == [-104, -117, -123] and out[1, :, 0, 0].tolist() == [151, 138, 132]
    with pytest.raises(ValueError, match="contiguous"):
        s3fd_preprocess(torch.from_numpy(frames), out=torch.empty(2, 3, 4, 5), impl=impl)


def test_preprocess_real_frames_and_input_checks() -> None:
    from wav2lip_trt.samples import talking_face_frames

    frames = np.stack(list(talking_face_frames(2, width=40, height=32, seed=3)))
    t = torch.from_numpy(frames)
    assert torch.equal(s3fd_preprocess(t, impl="triton"), preprocess(frames))
    with pytest.raises(ValueError, match="uint8"):
        s3fd_preprocess(t.float(), impl="torch")
    with pytest.raises(ValueError, match="float32 or float16"):
        s3fd_preprocess(t, torch.bfloat16, impl="torch")
    with pytest.raises(InputError, match="unknown kernel implementation"):
        s3fd_preprocess(t, impl="cuda")


# --- the fused choice --------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_hand_made_faces(impl) -> None:
    out = blank_outputs(4)
    place(out, 1, 0, 5, 7, logit=4.0)  # anchor only: (22, 14, 38, 30)
    place(out, 3, 1, 0, 0, logit=4.0, loc=(0.3, 0.0, 0.0, 0.0))  # clipped at 0: (0, 0, 41, 40)
    place(out, 1, 2, 5, 7, logit=0.0)  # score exactly 0.5: no face
    place(out, 2, 3, 6, 6, logit=2.0, loc=(0.5, -0.25, 5 * math.log(2), -5 * math.log(2)))
    got = choose_faces_device(out, impl=impl)
    assert got.boxes.dtype == torch.int64 and got.found.dtype == torch.bool
    assert got.to_list() == choose_faces(out)
    assert got.to_list()[:3] == [(22, 14, 38, 30), (0, 0, 41, 40), None]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("level", range(1, 7))
def test_last_position_of_every_level(impl, level) -> None:
    out = blank_outputs(1, 64, 96)
    h, w = head_map_sizes(64, 96)[level - 1]
    place(out, level, 0, h - 1, w - 1, logit=3.0, loc=(0.1, -0.2, 0.3, -0.4))
    assert choose_faces_device(out, impl=impl).to_list() == choose_faces(out)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_face_and_batch_of_one(impl) -> None:
    assert choose_faces_device(blank_outputs(3), impl=impl).to_list() == [None, None, None]
    out = blank_outputs(1)
    place(out, 2, 0, 3, 3, logit=5.0)
    assert choose_faces_device(out, impl=impl).to_list() == choose_faces(out) == [(12, 12, 44, 44)]


@pytest.mark.parametrize("impl", IMPLS)
def test_smallest_positive_margin_thresholds_like_softmax(impl) -> None:
    out = blank_outputs(2)
    place(out, 1, 0, 5, 7, logit=1e-6)  # just above 0.5
    place(out, 1, 1, 5, 7, logit=-1e-6)
    assert choose_faces_device(out, impl=impl).to_list() == choose_faces(out) == [(22, 14, 38, 30), None]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", range(6))
def test_random_outputs_match_reference(impl, seed) -> None:
    rng = np.random.default_rng(seed)
    batch = int(rng.integers(1, 5))
    quantum = [None, None, 0.5][seed % 3]  # coarse logits give exactly tied scores
    out = random_outputs(rng, batch, scale=float(rng.uniform(0.5, 4)), quantum=quantum)
    assert_same_choice(out, choose_faces_device(out, impl=impl).to_list())


@pytest.mark.parametrize("impl", IMPLS)
def test_tied_top_scores_pick_the_largest_margin_then_the_first_position(impl) -> None:
    out = blank_outputs(2)
    # float32 softmax saturates: logits 20 and 25 both score exactly 1.0, a three-way tie
    place(out, 1, 0, 3, 3, logit=20.0)
    place(out, 2, 0, 5, 5, logit=25.0)
    place(out, 1, 0, 8, 8, logit=25.0)
    # equal logits: an exact tie between two positions of one level
    place(out, 1, 1, 9, 2, logit=3.0)
    place(out, 1, 1, 2, 9, logit=3.0)
    tied = top_boxes(out)
    assert [len(t) for t in tied] == [3, 2]
    got = choose_faces_device(out, impl=impl).to_list()
    assert got[0] in tied[0] and got[1] in tied[1]
    assert got == [(26, 26, 42, 42), (30, 2, 46, 18)]


@pytest.mark.parametrize("impl", IMPLS)
def test_heavily_tied_random_outputs(impl) -> None:
    rng = np.random.default_rng(50)
    out = random_outputs(rng, 4, scale=6.0, quantum=2.0)
    assert any(len(t) > 1 for t in top_boxes(out))
    assert_same_choice(out, choose_faces_device(out, impl=impl).to_list())


def test_triton_equals_torch_reference_bitwise() -> None:
    rng = np.random.default_rng(100)
    for _ in range(3):
        out = random_outputs(rng, 3, height=64, width=96, scale=2.0, quantum=0.25)
        a, b = choose_faces_device(out, impl="torch"), choose_faces_device(out, impl="triton")
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.found, b.found)


@pytest.mark.parametrize("impl", IMPLS)
def test_float16_outputs_are_read_as_float32(impl) -> None:
    out = [o.half() for o in random_outputs(np.random.default_rng(7), 2, scale=1.5)]
    expected = choose_faces([o.float() for o in out])
    assert choose_faces_device(out, impl=impl).to_list() == expected


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_candidate_takes_the_nms_path(impl) -> None:
    out = blank_outputs(2)
    # position (level 1, 2, 2) is a candidate because image 0 passes there ...
    place(out, 1, 0, 2, 2, logit=4.0)
    # ... so image 1's NaN score there becomes a NaN row, which NMS keeps first and which
    # suppresses image 1's best real face next to it (IoU > 0.3); its second face survives.
    out[0][1, :, 2, 2] = float("nan")
    place(out, 1, 1, 2, 3, logit=5.0)
    place(out, 3, 1, 3, 3, logit=3.0)
    expected = choose_faces(out)
    assert expected == [(2, 2, 18, 18), (24, 24, 88, 88)]  # not image 1's argmax (6, 2, 22, 18)
    assert choose_faces_device(out, impl=impl).to_list() == expected


@pytest.mark.parametrize("impl", IMPLS)
def test_infinite_logits(impl) -> None:
    out = blank_outputs(3)
    place(out, 1, 0, 5, 7, logit=4.0)
    out[0][0, 0, 5, 7] = -float("inf")  # background -inf: score 1, a normal face
    place(out, 2, 1, 3, 3, logit=4.0)
    out[0][1, 1, 1, 1] = float("inf")  # face logit +inf: NaN score in torch's softmax
    place(out, 2, 2, 1, 1, logit=6.0)
    assert choose_faces_device(out, impl=impl).to_list() == choose_faces(out)


# --- full detection lists and NMS --------------------------------------------------------------


def distinct_top_scores(outputs) -> bool:
    return all(len(np.unique(d[:, 4])) == len(d) for d in detections_per_image(outputs))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", range(4))
def test_detections_equal_numpy_nms(impl, seed) -> None:
    rng = np.random.default_rng(200 + seed)
    out = random_outputs(rng, 1 + seed % 3, scale=1.8, loc_scale=0.5)
    assert distinct_top_scores(out)  # no score ties, so the kept order is defined
    expected = detections_per_image(out)
    got = detections_device(out, impl=impl)
    assert sum(len(e) for e in expected) > 10
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32
        np.testing.assert_array_equal(g.numpy(), e)


@pytest.mark.parametrize("impl", IMPLS)
def test_detections_empty_and_nan(impl) -> None:
    assert [d.shape for d in detections_device(blank_outputs(2), impl=impl)] == [(0, 5), (0, 5)]
    out = blank_outputs(2)
    place(out, 1, 0, 2, 2, logit=4.0)
    out[0][1, :, 2, 2] = float("nan")
    place(out, 1, 1, 2, 3, logit=5.0)
    place(out, 3, 1, 3, 3, logit=3.0)
    for g, e in zip(detections_device(out, impl=impl), detections_per_image(out)):
        np.testing.assert_array_equal(g.numpy(), e)


def dets32(*rows) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


NMS_CASES = [
    dets32([0, 0, 9, 9, 0.9], [5, 0, 14, 9, 0.8]),  # +1 areas: IoU 0.33 -> suppressed
    dets32([0, 0, 9, 9, 0.9], [6, 0, 15, 9, 0.8]),
    dets32([0, 0, 9, 9, 0.9], [5.38, 0, 14.38, 9, 0.8]),  # IoU 0.3004
    dets32([0, 0, 9, 9, 0.9], [5.39, 0, 14.39, 9, 0.8]),  # IoU 0.2996
    dets32([0, 0, 9, 9, 0.9], [0, 0, 2, 9, 0.8]),  # IoU == float32(0.3): kept
    dets32([0, 0, 9, 9, 0.5], [2, 0, 11, 9, 0.9], [50, 50, 59, 59, 0.7], [4, 0, 13, 9, 0.6]),
    dets32([0, 0, 9, 9, 0.9], [np.nan, 0, 9, 9, 0.8], [40, 40, 49, 49, 0.7]),  # NaN IoU suppresses
    dets32([0, 0, 9, 9, np.nan], [1, 1, 10, 10, 0.8], [40, 40, 49, 49, 0.7]),  # NaN score sorts first
    dets32([-5, -5, 3, 3, 0.9], [20, 20, 10, 10, 0.8], [0, 0, 1e6, 1e6, 0.7]),  # empty and huge boxes
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(NMS_CASES)))
def test_nms_equals_numpy(impl, case) -> None:
    dets = NMS_CASES[case]
    assert nms_indices(torch.from_numpy(dets), impl=impl).tolist() == nms(dets)


@pytest.mark.parametrize("impl", IMPLS)
def test_nms_random_boxes(impl) -> None:
    rng = np.random.default_rng(300)
    for k in (1, 2, 17, 150):
        xy = rng.uniform(0, 100, (k, 2))
        wh = rng.uniform(1, 40, (k, 2))
        dets = np.concatenate([xy, xy + wh, rng.permutation(k)[:, None] / k + 0.01], axis=1).astype(np.float32)
        assert nms_indices(torch.from_numpy(dets), impl=impl).tolist() == nms(dets)
    assert nms_indices(torch.zeros((0, 5)), impl=impl).tolist() == []


# --- real frames through a random-weight S3FD --------------------------------------------------


@pytest.fixture(scope="module")
def s3fd_outputs() -> list[torch.Tensor]:
    from wav2lip_trt.models.s3fd import S3FD
    from wav2lip_trt.random_weights import random_s3fd_state_dict
    from wav2lip_trt.samples import talking_face_frames

    net = S3FD()
    net.load_state_dict(random_s3fd_state_dict(0))
    net.eval()
    frames = np.stack(list(talking_face_frames(3, width=112, height=88, seed=5)))
    with torch.no_grad():
        return list(net(s3fd_preprocess(torch.from_numpy(frames), impl="triton")))


@pytest.mark.parametrize("impl", IMPLS)
def test_real_frames_choice(impl, s3fd_outputs) -> None:
    expected = choose_faces(s3fd_outputs)
    assert all(box is not None for box in expected)
    assert choose_faces_device(s3fd_outputs, impl=impl).to_list() == expected
    single = [o[1:2] for o in s3fd_outputs]
    assert choose_faces_device(single, impl=impl).to_list() == choose_faces(single)


@pytest.mark.parametrize("impl", IMPLS)
def test_real_frames_detection_lists(impl, s3fd_outputs) -> None:
    for g, e in zip(detections_device(s3fd_outputs, impl=impl), detections_per_image(s3fd_outputs)):
        assert len(e) > 1
        np.testing.assert_array_equal(g.numpy(), e)


def test_output_checks() -> None:
    out = blank_outputs(1)
    with pytest.raises(ValueError, match="12 S3FD outputs"):
        choose_faces_device(out[:10], impl="torch")
    out[3] = out[3][:, :2]
    with pytest.raises(ValueError, match="level 2"):
        choose_faces_device(out, impl="torch")
