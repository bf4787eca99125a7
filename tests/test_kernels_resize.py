"""OpenCV INTER_LINEAR uint8 arithmetic in torch (kernels.resize) against cv2.resize itself.

The torch reference is cheap, so it is checked over many sizes here; the Triton kernels that
share the arithmetic are checked on fewer sizes in test_kernels_faces.py.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from wav2lip_trt.kernels.crop import crop_faces_torch
from wav2lip_trt.kernels.resize import linear_taps, resize_linear

SPECIAL = [47, 48, 49, 95, 96, 97, 127, 128, 191, 192, 193, 255, 256, 383, 384, 399, 400]


def crops_against_opencv(frame: np.ndarray, shapes: list[tuple[int, int]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = frame.shape[:2]
    boxes = []
    for h, w in shapes:
        y1, x1 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        boxes.append((y1, y1 + h, x1, x1 + w))
    frames = torch.from_numpy(frame)[None].expand(len(boxes), -1, -1, -1)
    got = crop_faces_torch(frames, torch.tensor(boxes)).numpy()
    for crop, (y1, y2, x1, x2) in zip(got, boxes):
        expected = cv2.resize(frame[y1:y2, x1:x2], (96, 96))
        if not np.array_equal(crop, expected):
            diff = int(np.abs(crop.astype(int) - expected).max())
            pytest.fail(f"{x2 - x1}x{y2 - y1} -> 96x96 differs from cv2.resize (max diff {diff})")


def test_downscale_and_upscale_to_96_every_small_size() -> None:
    frame = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    crops_against_opencv(frame, [(h, w) for h in range(1, 25) for w in range(1, 25)], seed=1)


def test_to_96_special_sizes_around_multiples_and_two_x() -> None:
    frame = np.random.default_rng(2).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    sizes = [1, 2, 3, 7, 31, *SPECIAL]
    crops_against_opencv(frame, [(h, w) for h in sizes for w in sizes], seed=3)


def test_to_96_random_sizes_on_a_real_looking_frame() -> None:
    from wav2lip_trt.samples import talking_face_frames

    frame = next(talking_face_frames(1, width=400, height=360, seed=4))
    rng = np.random.default_rng(5)
    shapes = [(int(h), int(w)) for h, w in rng.integers(1, 360, (150, 2))]
    crops_against_opencv(frame, shapes, seed=6)


@pytest.mark.parametrize("seed", range(3))
def test_paste_direction_96_to_any_box(seed: int) -> None:
    rng = np.random.default_rng(10 + seed)
    face = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    sizes = [(1, 1), (1, 96), (96, 1), (48, 48), (96, 96), (192, 192), (97, 95), (400, 3)]
    sizes += [(int(w), int(h)) for w, h in rng.integers(1, 400, (25, 2))]
    for width, height in sizes:
        got = resize_linear(torch.from_numpy(face), width, height).numpy()
        np.testing.assert_array_equal(got, cv2.resize(face, (width, height)), err_msg=f"96x96 -> {width}x{height}")


def test_general_sizes_both_directions() -> None:
    rng = np.random.default_rng(20)
    for _ in range(40):
        h, w, height, width = (int(v) for v in rng.integers(1, 160, 4))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        got = resize_linear(torch.from_numpy(image), width, height).numpy()
        np.testing.assert_array_equal(got, cv2.resize(image, (width, height)), err_msg=f"{w}x{h} -> {width}x{height}")


def test_saturated_images_stay_saturated() -> None:
    for value in (0, 255):
        for h, w in [(1, 1), (3, 7), (200, 13)]:
            image = np.full((h, w, 3), value, dtype=np.uint8)
            for size in [(96, 96), (500, 3), (1, 1)]:
                got = resize_linear(torch.from_numpy(image), *size).numpy()
                np.testing.assert_array_equal(got, cv2.resize(image, size))


def test_textbook_fixed_point_rounding_is_not_what_opencv_does() -> None:
    """The vertical pass must use OpenCV's SIMD rounding; the scalar formula differs on some pixels."""
    rng = np.random.default_rng(30)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    cols = linear_taps(torch.tensor([53]), torch.tensor([96]), 96, columns=True)
    rows = linear_taps(torch.tensor([37]), torch.tensor([96]), 96, columns=False)
    px = torch.from_numpy(image).to(torch.int64)
    horizontal = px[:, cols.i0[0]] * cols.w0[0][None, :, None] + px[:, cols.i1[0]] * cols.w1[0][None, :, None]
    h0, h1 = horizontal[rows.i0[0]], horizontal[rows.i1[0]]
    v0, v1 = rows.w0[0][:, None, None], rows.w1[0][:, None, None]
    scalar = ((h0 * v0 + h1 * v1 + (1 << 21)) >> 22).clamp(0, 255).to(torch.uint8).numpy()
    expected = cv2.resize(image, (96, 96))
    assert not np.array_equal(scalar, expected)
    np.testing.assert_array_equal(resize_linear(torch.from_numpy(image), 96, 96).numpy(), expected)


def test_taps_follow_opencv_border_rules() -> None:
    # upscaling 4 -> 8: columns clamp with weight (2048, 0) at both borders, rows keep the fraction
    cols = linear_taps(torch.tensor([4]), torch.tensor([8]), 8, columns=True)
    rows = linear_taps(torch.tensor([4]), torch.tensor([8]), 8, columns=False)
    assert cols.i0[0].tolist() == [0, 0, 0, 1, 1, 2, 2, 3]
    assert cols.w0[0, 0].item() == 2048 and cols.w1[0, 0].item() == 0
    assert cols.w0[0, -1].item() == 2048 and cols.w1[0, -1].item() == 0
    assert rows.i0[0, 0].item() == rows.i1[0, 0].item() == 0  # row -1 clamped to 0 ...
    assert (rows.w0[0, 0].item(), rows.w1[0, 0].item()) == (512, 1536)  # ... with f = 0.75 kept
    assert (cols.w0 + cols.w1).eq(2048).all() and (rows.w0 + rows.w1).eq(2048).all()


def test_resize_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        resize_linear(torch.zeros((4, 4, 3)), 2, 2)
    with pytest.raises(ValueError, match="cannot resize"):
        resize_linear(torch.zeros((4, 4, 3), dtype=torch.uint8), 0, 2)
