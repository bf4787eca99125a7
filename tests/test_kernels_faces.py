"""Crop -> generator input and paste-back kernels against wav2lip_trt.faces (cv2.resize underneath).

``impl="triton"`` on CPU tensors runs the kernels in Triton's interpreter; frames are kept
small because the interpreter is slow.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from wav2lip_trt.faces import crop_faces, generator_inputs, paste_back, prediction_to_uint8
from wav2lip_trt.kernels import (
    FEATHER_DIVISOR,
    crop_faces_device,
    crop_to_generator_input,
    feather_weights,
    paste_back_batch,
)
from wav2lip_trt.samples import talking_face_frames

pytest.importorskip("triton")

IMPLS = ["torch", "triton"]


def random_frames(batch: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def reference_feed(frames, boxes, mel, starts):
    chunks = np.stack([mel[:, s : s + 16] for s in starts])
    return generator_inputs(crop_faces(list(frames), boxes), chunks)


# --- crops ---------------------------------------------------------------------------------------

EDGE_BOXES = [
    (0, 50, 0, 70),  # the whole frame: touches all four edges
    (0, 1, 0, 1),  # one pixel
    (3, 40, 20, 21),  # one pixel wide
    (30, 31, 2, 69),  # one pixel high
    (10, 60, 40, 999),  # past the right and bottom edges: cut like numpy slicing
    (-20, 50, -30, -1),  # negative bounds count from the end, like numpy slicing
    (1, 48, 3, 48),  # odd sizes
]


@pytest.mark.parametrize("impl", IMPLS)
def test_crops_at_frame_edges_equal_opencv(impl) -> None:
    frames = random_frames(len(EDGE_BOXES), 50, 70, seed=1)
    got = crop_faces_device(torch.from_numpy(frames), EDGE_BOXES, impl=impl)
    assert got.dtype == torch.uint8 and got.shape == (len(EDGE_BOXES), 96, 96, 3)
    np.testing.assert_array_equal(got.numpy(), crop_faces(list(frames), EDGE_BOXES))


@pytest.mark.parametrize("impl", IMPLS)
def test_crops_exact_two_x_identity_and_upscale(impl) -> None:
    frames = random_frames(4, 200, 200, seed=2)
    boxes = [(0, 192, 8, 200), (5, 101, 50, 146), (0, 193, 0, 191), (60, 77, 60, 91)]  # 2x, 1x, ~2x, up
    got = crop_faces_device(torch.from_numpy(frames), np.array(boxes), impl=impl)
    np.testing.assert_array_equal(got.numpy(), crop_faces(list(frames), boxes))


def test_triton_crops_many_sizes_equal_opencv() -> None:
    frame = random_frames(1, 130, 130, seed=3)[0]
    rng = np.random.default_rng(4)
    sizes = [(h, w) for h in (1, 2, 5, 17, 48, 95, 96, 97, 129) for w in (1, 3, 48, 96, 130)]
    boxes = []
    for h, w in sizes:
        y1, x1 = int(rng.integers(0, 131 - h)), int(rng.integers(0, 131 - w))
        boxes.append((y1, y1 + h, x1, x1 + w))
    frames = np.repeat(frame[None], len(boxes), axis=0)
    got = crop_faces_device(torch.from_numpy(frames), boxes, impl="triton")
    np.testing.assert_array_equal(got.numpy(), crop_faces(list(frames), boxes))


def test_empty_crop_is_refused() -> None:
    frames = torch.zeros((2, 10, 10, 3), dtype=torch.uint8)
    for box in [(5, 5, 0, 10), (0, 10, 12, 20), (-1, 3, 0, 10)]:
        with pytest.raises(ValueError, match="selects no pixels"):
            crop_faces_device(frames, [(0, 10, 0, 10), box], impl="torch")
    with pytest.raises(ValueError, match="one .* box per frame"):
        crop_faces_device(frames, [(0, 10, 0, 10)], impl="torch")


# --- the 6-channel generator input and mel chunks ---------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_generator_input_equals_reference_on_real_frames(impl) -> None:
    frames = np.stack(list(talking_face_frames(3, width=80, height=64, seed=5)))
    boxes = [(10, 60, 15, 65), (0, 64, 0, 80), (20, 43, 30, 47)]
    mel = np.random.default_rng(6).uniform(-4, 4, (80, 45))  # float64, as numpy 2 produces it
    starts = [0, 17, 45 - 16]  # the last chunk starts at T - 16
    mel_ref, face_ref = reference_feed(frames, boxes, mel, starts)
    mel_got, face_got = crop_to_generator_input(torch.from_numpy(frames), boxes, mel, starts, impl=impl)
    assert face_got.shape == (3, 6, 96, 96) and face_got.dtype == torch.float32 and face_got.is_contiguous()
    assert mel_got.shape == (3, 1, 80, 16) and mel_got.dtype == torch.float32
    assert torch.equal(face_got, face_ref) and torch.equal(mel_got, mel_ref)
    assert (face_got[:, :3, 48:] == 0).all() and (face_got[:, 3:, 48:] > 0).any()


@pytest.mark.parametrize("impl", IMPLS)
def test_generator_input_batch_of_one_float32_mel(impl) -> None:
    frames = random_frames(1, 33, 41, seed=7)
    mel = np.random.default_rng(8).normal(size=(80, 16)).astype(np.float32)
    mel_ref, face_ref = reference_feed(frames, [(0, 33, 0, 41)], mel, [0])
    mel_got, face_got = crop_to_generator_input(
        torch.from_numpy(frames), torch.tensor([[0, 33, 0, 41]]), torch.from_numpy(mel), torch.tensor([0]), impl=impl
    )
    assert torch.equal(face_got, face_ref) and torch.equal(mel_got, mel_ref)


def test_mel_chunk_starts_are_checked() -> None:
    frames = torch.zeros((2, 8, 8, 3), dtype=torch.uint8)
    boxes = [(0, 8, 0, 8)] * 2
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        crop_to_generator_input(frames, boxes, np.zeros((80, 20)), [0, 5], impl="torch")
    with pytest.raises(ValueError, match="80, T"):
        crop_to_generator_input(frames, boxes, np.zeros((40, 20)), [0, 1], impl="torch")
    with pytest.raises(ValueError, match="2 chunk starts"):
        crop_to_generator_input(frames, boxes, np.zeros((80, 20)), [0], impl="torch")


# --- paste-back ---------------------------------------------------------------------------------


def reference_paste(frames: np.ndarray, pred: np.ndarray, boxes) -> np.ndarray:
    out = frames.copy()
    faces = prediction_to_uint8(pred)
    for frame, face, box in zip(out, faces, boxes):
        paste_back(frame, face, box)
    return out


def sigmoid_like(batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pred = rng.uniform(0, 1, (batch, 3, 96, 96)).astype(np.float32)
    # exact multiples of 1/255 and their neighbours: where truncation (not rounding) shows
    levels = (np.arange(4 * 96) % 256).astype(np.float32) / np.float32(255)
    pred[:, :, :4] = levels.reshape(4, 96)
    pred[:, :, 4:8] = np.nextafter(levels, np.float32(0)).reshape(4, 96)
    pred[:, 0, 10, :3] = [0.0, 1.0, np.nextafter(np.float32(1), np.float32(0))]
    return pred


PASTE_BOXES = [
    (0, 48, 0, 48),  # exactly half: OpenCV switches to INTER_AREA, touches the corner
    (5, 101, 10, 106),  # same size
    (0, 120, 1, 130),  # upscale, full height
    (119, 120, 0, 1),  # one pixel at the bottom-left corner
    (7, 60, 100, 131),  # odd sizes, touching the right edge
]


@pytest.mark.parametrize("impl", IMPLS)
def test_paste_back_equals_reference(impl) -> None:
    frames = random_frames(len(PASTE_BOXES), 120, 131, seed=9)
    pred = sigmoid_like(len(PASTE_BOXES), seed=10)
    expected = reference_paste(frames, pred, PASTE_BOXES)
    out = torch.from_numpy(frames.copy())
    assert paste_back_batch(out, torch.from_numpy(pred), PASTE_BOXES, impl=impl) is out
    np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_paste_back_float16_prediction_and_tensor_boxes(impl) -> None:
    frames = random_frames(2, 40, 50, seed=11)
    pred16 = torch.from_numpy(sigmoid_like(2, seed=12)).half()
    boxes = torch.tensor([[3, 37, 4, 49], [0, 40, 0, 50]])
    expected = reference_paste(frames, pred16.float().numpy(), boxes.tolist())
    out = torch.from_numpy(frames.copy())
    paste_back_batch(out, pred16, boxes, impl=impl)
    np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_paste_back_on_real_frames_after_device_crop(impl) -> None:
    frames = np.stack(list(talking_face_frames(2, width=96, height=80, seed=13)))
    boxes = [(15, 70, 20, 76), (12, 69, 22, 77)]
    _, face = crop_to_generator_input(torch.from_numpy(frames), boxes, np.zeros((80, 16)), [0, 0], impl=impl)
    pred = face[:, 3:].flip(1).contiguous()  # any [0, 1] image works as a "prediction"
    expected = reference_paste(frames, pred.numpy(), boxes)
    out = torch.from_numpy(frames.copy())
    paste_back_batch(out, pred, boxes, impl=impl)
    np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_paste_back_drops_pixels_outside_the_frame(impl) -> None:
    frames = random_frames(2, 30, 40, seed=14)
    pred = sigmoid_like(2, seed=15)
    boxes = [(-5, 25, 30, 52), (20, 20, 5, 15)]  # partly outside; empty (left unchanged)
    canvas = np.zeros((2, 40, 62, 3), dtype=np.uint8)  # the frame with room for the whole box
    canvas[:, 5:35, :40] = frames
    shifted = [(0, 30, 30, 52), (25, 25, 5, 15)]
    expected = reference_paste(canvas[:1], pred[:1], shifted[:1])[:, 5:35, :40]
    out = torch.from_numpy(frames.copy())
    paste_back_batch(out, torch.from_numpy(pred), boxes, impl=impl)
    np.testing.assert_array_equal(out[0].numpy(), expected[0])
    np.testing.assert_array_equal(out[1].numpy(), frames[1])


def test_feather_blend_ramp() -> None:
    frames = random_frames(2, 70, 90, seed=16)
    pred = torch.from_numpy(sigmoid_like(2, seed=17))
    boxes = [(4, 64, 10, 80), (0, 70, 60, 90)]  # 60x70 (ramp 6) and 70x30 touching edges (ramp 3)
    plain = reference_paste(frames, pred.numpy(), boxes)
    a = paste_back_batch(torch.from_numpy(frames.copy()), pred, boxes, blend="feather", impl="torch")
    b = paste_back_batch(torch.from_numpy(frames.copy()), pred, boxes, blend="feather", impl="triton")
    assert torch.equal(a, b)
    got = a.numpy().astype(int)
    for i, (y1, y2, x1, x2) in enumerate(boxes):
        ramp = max(1, min(y2 - y1, x2 - x1) // FEATHER_DIVISOR)
        inner = (slice(y1 + ramp, y2 - ramp), slice(x1 + ramp, x2 - ramp))
        np.testing.assert_array_equal(got[i][inner], plain[i][inner])  # full prediction inside the ramp
        outside = np.ones(frames.shape[1:3], bool)
        outside[y1:y2, x1:x2] = False
        np.testing.assert_array_equal(got[i][outside], frames[i][outside])
        edge = got[i][y1, x1 + ramp : x2 - ramp]  # weight 1/(2R) of the prediction on the border row
        old, new = frames[i][y1, x1 + ramp : x2 - ramp].astype(int), plain[i][y1, x1 + ramp : x2 - ramp].astype(int)
        np.testing.assert_array_equal(edge, (new + old * (2 * ramp - 1) + ramp) // (2 * ramp))
    weights = feather_weights(10, 40)
    assert weights.shape == (10, 40) and weights.max() == 2
    assert weights[0].eq(1).all() and weights[1:-1, 1:-1].eq(2).all()


def test_paste_back_checks() -> None:
    frames = torch.zeros((1, 10, 10, 3), dtype=torch.uint8)
    pred = torch.zeros((1, 3, 96, 96))
    with pytest.raises(ValueError, match="blend"):
        paste_back_batch(frames, pred, [(0, 5, 0, 5)], blend="poisson", impl="torch")
    with pytest.raises(ValueError, match="predictions"):
        paste_back_batch(frames, pred[:, :, :95], [(0, 5, 0, 5)], impl="torch")
    with pytest.raises(ValueError, match="one .* box per frame"):
        paste_back_batch(frames, pred, [(0, 5, 0, 5), (0, 5, 0, 5)], impl="torch")


def test_crop_then_paste_round_trip_is_opencv_twice() -> None:
    frame = random_frames(1, 60, 60, seed=18)
    box = (5, 55, 8, 52)
    crop = crop_faces_device(torch.from_numpy(frame), [box], impl="triton")[0].numpy()
    np.testing.assert_array_equal(crop, cv2.resize(frame[0, 5:55, 8:52], (96, 96)))
    pred = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    out = paste_back_batch(torch.from_numpy(frame.copy()), pred, [box], impl="triton")[0].numpy()
    back = cv2.resize(prediction_to_uint8(pred.numpy())[0], (44, 50))
    np.testing.assert_array_equal(out[5:55, 8:52], back)
