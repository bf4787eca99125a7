"""--detect-every (sparse detection + interpolation) and --detect-size (scaled detection)."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import torch

from wav2lip_trt.detect import MIN_FRAME_SIDE
from wav2lip_trt.detection.scaled import (
    check_detect_size,
    detect_scale,
    map_box_back,
    scale_frames_device,
    scale_frames_host,
)
from wav2lip_trt.detection.sparse import (
    NOT_DETECTED,
    detected_frames,
    interpolate_box,
    interpolate_boxes,
    interpolate_stream,
    mark_last,
    needs_detection,
    round_div,
)
from wav2lip_trt.errors import InputError

# ---------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    ("total", "every", "expected"),
    [
        (11, 5, [0, 5, 10]),
        (12, 5, [0, 5, 10, 11]),
        (10, 5, [0, 5, 9]),
        (6, 5, [0, 5]),
        (5, 5, [0, 4]),
        (1, 5, [0]),
        (2, 5, [0, 1]),
        (0, 5, []),
        (4, 1, [0, 1, 2, 3]),
        (3, 100, [0, 2]),
    ],
)
def test_detected_frames(total, every, expected):
    assert detected_frames(total, every) == expected


@pytest.mark.parametrize("every", [0, -1, 1.5, True, None])
def test_every_must_be_a_positive_integer(every):
    with pytest.raises(InputError, match="--detect-every"):
        detected_frames(10, every)
    with pytest.raises(InputError, match="--detect-every"):
        list(interpolate_stream([(0, None)], every))


def test_needs_detection_matches_the_schedule():
    for total in range(1, 20):
        for every in (1, 2, 3, 5, 7):
            got = [i for i in range(total) if needs_detection(i, every, last=i == total - 1)]
            assert got == detected_frames(total, every)


def test_mark_last():
    assert list(mark_last([])) == []
    assert list(mark_last("a")) == [("a", True)]
    assert list(mark_last("abc")) == [("a", False), ("b", False), ("c", True)]


# ---------------------------------------------------------------- rounding


@pytest.mark.parametrize(
    ("num", "den", "expected"),
    [(0, 3, 0), (1, 2, 1), (3, 2, 2), (5, 2, 3), (-1, 2, -1), (-3, 2, -2), (1, 3, 0), (2, 3, 1),
     (-1, 3, 0), (-2, 3, -1), (7, 1, 7), (10**30 + 1, 2, 5 * 10**29 + 1)],
)
def test_round_div_is_half_away_from_zero(num, den, expected):
    assert round_div(num, den) == expected


def test_interpolation_halves():
    # 0 -> 1 over 2 frames: 0.5 rounds up; 0 -> -1: -0.5 rounds away from zero to -1.
    assert interpolate_box(0, (0, 0, 0, 0), 2, (1, -1, 3, 1), 1) == (1, -1, 2, 1)
    # 0 -> 2 over 4 frames: 0.5 -> 1, 1.0 -> 1, 1.5 -> 2.
    boxes = interpolate_boxes(5, {0: (0, 0, 0, 0), 4: (2, 2, 2, 2)})
    assert [b[0] for b in boxes] == [0, 1, 1, 2, 2]


def test_interpolation_has_no_float_drift():
    # Large coordinates and long gaps: the exact rational value, rounded once.
    a, b = 0, 999_983
    box_a, box_b = (10**15, 3, 7, 10**15 + 1), (10**15 + 999_983, 999_986, 999_990, 0)
    for i in (1, 12345, 500_000, b - 1):
        got = interpolate_box(a, box_a, b, box_b, i)
        assert got == (10**15 + i, 3 + i, 7 + i, round_div((10**15 + 1) * (b - i), b))


# ---------------------------------------------------------------- interpolation (batch form)


def test_hand_computed_interpolation():
    assert detected_frames(11, 5) == [0, 5, 10]
    boxes = interpolate_boxes(11, {0: (0, 0, 10, 10), 5: (10, 20, 30, 40), 10: (10, 20, 30, 40)})
    # frame i in (0, 5): (0 + 10 i/5, 0 + 20 i/5, 10 + 20 i/5, 10 + 30 i/5)
    assert boxes[:6] == [
        (0, 0, 10, 10),
        (2, 4, 14, 16),
        (4, 8, 18, 22),
        (6, 12, 22, 28),
        (8, 16, 26, 34),
        (10, 20, 30, 40),
    ]
    assert boxes[6:] == [(10, 20, 30, 40)] * 5


def test_hand_computed_with_rounding_and_last_frame():
    # total 12, every 5 -> 0, 5, 10, 11; 100 -> 103 over 5 frames: 100.6, 101.2, 101.8, 102.4.
    det = {0: (100, 0, 0, 0), 5: (103, 0, 0, 0), 10: (103, 0, 0, 0), 11: (50, 1, 2, 3)}
    boxes = interpolate_boxes(12, det)
    assert [b[0] for b in boxes[:6]] == [100, 101, 101, 102, 102, 103]
    assert boxes[11] == (50, 1, 2, 3)


def test_every_one_is_the_identity():
    rng = np.random.default_rng(0)
    total = 23
    det = {i: (None if i % 7 == 3 else tuple(int(v) for v in rng.integers(0, 2000, 4))) for i in range(total)}
    assert detected_frames(total, 1) == list(range(total))
    assert interpolate_boxes(total, det) == [det[i] for i in range(total)]
    assert list(interpolate_stream(((i, det[i]) for i in range(total)), 1)) == [(i, det[i]) for i in range(total)]


def test_no_face_at_an_endpoint_gives_none_between():
    box = (10, 10, 50, 50)
    boxes = interpolate_boxes(11, {0: box, 5: None, 10: box})
    assert boxes == [box, None, None, None, None, None, None, None, None, None, box]
    boxes = interpolate_boxes(7, {0: None, 3: box, 6: box})
    assert boxes == [None, None, None, box, box, box, box]


def test_detected_frames_keep_their_boxes_and_values_are_ints():
    det = {0: (np.int64(1), 2, 3, 4), 3: (7, 8, 9, 10)}
    boxes = interpolate_boxes(4, det)
    assert boxes == [(1, 2, 3, 4), (3, 4, 5, 6), (5, 6, 7, 8), (7, 8, 9, 10)]
    assert all(type(v) is int for b in boxes for v in b)


def test_interpolate_boxes_validation():
    assert interpolate_boxes(0, {}) == []
    assert interpolate_boxes(1, {0: None}) == [None]
    with pytest.raises(ValueError, match="must be detected"):
        interpolate_boxes(5, {0: None, 3: None})
    with pytest.raises(ValueError, match="must be detected"):
        interpolate_boxes(5, {2: None, 4: None})
    with pytest.raises(ValueError, match="must be detected"):
        interpolate_boxes(5, {0: None, 4: None, 7: None})
    with pytest.raises(ValueError):
        interpolate_boxes(-1, {})
    with pytest.raises(ValueError):
        interpolate_boxes(0, {0: None})


# ---------------------------------------------------------------- streaming form


class Recording:
    """An iterable that records how many items have been pulled from it."""

    def __init__(self, items):
        self.items = list(items)
        self.consumed = 0

    def __iter__(self):
        for item in self.items:
            self.consumed += 1
            yield item


def _random_detections(total, every, rng):
    det = {}
    for i in detected_frames(total, every):
        det[i] = None if rng.random() < 0.2 else tuple(int(v) for v in rng.integers(0, 1500, 4))
    return det


@pytest.mark.parametrize("every", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("total", [1, 2, 5, 9, 16, 17, 31])
def test_stream_equals_batch_and_holds_at_most_every_items(total, every):
    rng = np.random.default_rng(total * 100 + every)
    det = _random_detections(total, every, rng)
    expected = interpolate_boxes(total, det)
    source = Recording((("frame", i), det.get(i, NOT_DETECTED)) for i in range(total))
    got = []
    for key, box in interpolate_stream(source, every):
        # After yielding item n, at most items n .. n + every - 1 have been pulled.
        assert source.consumed - 1 <= key[1] + every - 1
        # Items pulled but not yet yielded (the held ones, this one included): at most `every`.
        assert source.consumed - len(got) <= every
        got.append((key, box))
    assert got == [(("frame", i), expected[i]) for i in range(total)]


def test_stream_with_mark_last_for_unknown_length():
    total, every = 13, 5
    rng = np.random.default_rng(1)
    det = _random_detections(total, every, rng)
    items = ((i, det[i] if needs_detection(i, every, last) else NOT_DETECTED) for i, last in mark_last(range(total)))
    assert [box for _, box in interpolate_stream(items, every)] == interpolate_boxes(total, det)


def test_stream_rejects_schedule_breaks():
    box = (1, 2, 3, 4)
    with pytest.raises(ValueError, match="item 0 must be detected"):
        list(interpolate_stream([(0, NOT_DETECTED), (1, box)], 2))
    with pytest.raises(ValueError, match="item 2 must be detected"):
        list(interpolate_stream([(0, box), (1, NOT_DETECTED), (2, NOT_DETECTED), (3, box)], 2))
    with pytest.raises(ValueError, match="last item"):
        list(interpolate_stream([(0, box), (1, NOT_DETECTED)], 3))
    with pytest.raises(ValueError, match="not the last"):
        list(interpolate_stream([(0, box), (1, box), (2, NOT_DETECTED), (3, box)], 3))
    assert list(interpolate_stream([], 3)) == []


def test_not_detected_is_a_singleton():
    assert pickle.loads(pickle.dumps(NOT_DETECTED)) is NOT_DETECTED
    assert repr(NOT_DETECTED) == "NOT_DETECTED"


# ---------------------------------------------------------------- scaled detection: sizes


@pytest.mark.parametrize(
    ("width", "height", "size", "expected"),
    [
        (1280, 720, 480, (480, 270)),
        (720, 1280, 480, (270, 480)),
        (1920, 1080, 640, (640, 360)),
        (1000, 1000, 480, (480, 480)),
        # 641 * 480 / 1001 = 307.37 -> 307; 333 * 480 / 1000 = 159.84 -> 160
        (1001, 641, 480, (480, 307)),
        (333, 1000, 480, (160, 480)),
        # halves round up: 3 * 64 / 384 ... 100 * 480 / 960 = 50 exactly; 101 * 480 / 960 = 50.5 -> 51
        (960, 101, 480, (480, 51)),
        (959, 1919, 480, (240, 480)),  # 959 * 480 / 1919 = 239.875 -> 240
    ],
)
def test_detect_scale_sizes(width, height, size, expected):
    scaled_width, scaled_height, fx, fy = detect_scale(width, height, size)
    assert (scaled_width, scaled_height) == expected
    assert fx == width / scaled_width and fy == height / scaled_height


def test_detect_scale_factors_1280x720():
    assert detect_scale(1280, 720, 480) == (480, 270, 1280 / 480, 720 / 270)


@pytest.mark.parametrize(("width", "height", "size"), [(640, 360, 640), (640, 360, 1000), (100, 40, 480), (32, 32, 32)])
def test_no_scaling_when_already_small(width, height, size):
    assert detect_scale(width, height, size) is None


def test_no_scaling_when_off():
    assert detect_scale(1280, 720, None) is None
    assert check_detect_size(None) is None


@pytest.mark.parametrize("size", [31, 0, -5, 100.0, True])
def test_detect_size_minimum(size):
    assert MIN_FRAME_SIDE == 32
    with pytest.raises(InputError, match="--detect-size"):
        detect_scale(1280, 720, size)


def test_scaled_shorter_side_too_small_is_an_input_error():
    with pytest.raises(InputError, match="at least 1280 "):
        detect_scale(1280, 32, 480)  # 32 * 480 / 1280 = 12 px
    assert detect_scale(1280, 32, 1280) is None
    assert detect_scale(1280, 32, 1279) is not None  # 31.975 -> 32
    assert detect_scale(4000, 100, 1280)[:2] == (1280, 32)


# ---------------------------------------------------------------- scaled detection: boxes back


def test_map_box_back_hand_computed():
    _, _, fx, fy = detect_scale(1280, 720, 480)  # 8/3 both ways
    # 10 * 8/3 = 26.67 -> 26; 20 * 8/3 = 53.33 -> 53; 100 * 8/3 = 266.67 -> 267; 200 * 8/3 = 533.33 -> 534
    assert map_box_back((10, 20, 100, 200), fx, fy, 1280, 720) == (26, 53, 267, 534)
    # exact multiples stay exact (float 480 * (1280 / 480) is not trusted)
    assert map_box_back((0, 0, 480, 270), fx, fy, 1280, 720) == (0, 0, 1280, 720)
    assert map_box_back((3, 3, 6, 6), fx, fy, 1280, 720) == (8, 8, 16, 16)
    # beyond the frame on the right/bottom stays beyond; below 0 clips to 0
    assert map_box_back((-4, -1, 500, 300), fx, fy, 1280, 720) == (0, 0, 1334, 800)
    assert map_box_back(None, fx, fy, 1280, 720) is None


def test_map_box_back_unequal_factors():
    scaled_width, scaled_height, fx, fy = detect_scale(1001, 641, 480)  # 480 x 307
    assert (scaled_width, scaled_height) == (480, 307)
    # x: 1001/480 -> 7 * 1001 / 480 = 14.6 -> 14, 11 * 1001 / 480 = 22.94 -> 23
    # y: 641/307 -> 5 * 641 / 307 = 10.44 -> 10, 9 * 641 / 307 = 18.79 -> 19
    assert map_box_back((7, 5, 11, 9), fx, fy, 1001, 641) == (14, 10, 23, 19)
    assert map_box_back((480, 307, 480, 307), fx, fy, 1001, 641) == (1001, 641, 1001, 641)


def test_map_box_back_never_shrinks():
    rng = np.random.default_rng(3)
    for width, height in [(1280, 720), (1001, 641), (333, 1000), (1920, 1080)]:
        scaled_width, scaled_height, fx, fy = detect_scale(width, height, 320)
        for _ in range(200):
            x1, x2 = sorted(int(v) for v in rng.integers(0, scaled_width + 5, 2))
            y1, y2 = sorted(int(v) for v in rng.integers(0, scaled_height + 5, 2))
            m = map_box_back((x1, y1, x2, y2), fx, fy, width, height)
            assert m[0] <= x1 * width / scaled_width < m[0] + 1
            assert m[2] - 1 < x2 * width / scaled_width <= m[2]
            assert m[1] <= y1 * height / scaled_height < m[1] + 1
            assert m[3] - 1 < y2 * height / scaled_height <= m[3]


def test_map_box_back_rejects_foreign_factors():
    with pytest.raises(ValueError, match="factor"):
        map_box_back((1, 2, 3, 4), 2.5001, 2.0, 1280, 720)


# ---------------------------------------------------------------- scaled detection: pixels


@pytest.mark.parametrize(("width", "height", "size"), [(1280, 720, 480), (333, 201, 97), (160, 90, 80), (97, 61, 64)])
def test_host_and_device_scaling_agree(width, height, size):
    rng = np.random.default_rng(width)
    frames = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    scaled_width, scaled_height, _, _ = detect_scale(width, height, size)
    host = scale_frames_host(frames, scaled_width, scaled_height)
    device = scale_frames_device(torch.from_numpy(frames), scaled_width, scaled_height)
    assert host.shape == (2, scaled_height, scaled_width, 3)
    np.testing.assert_array_equal(device.numpy(), host)
    np.testing.assert_array_equal(
        host[1], cv2.resize(frames[1], (scaled_width, scaled_height), interpolation=cv2.INTER_LINEAR)
    )


def test_scale_frames_validation():
    with pytest.raises(ValueError):
        scale_frames_host(np.zeros((4, 4, 3), np.uint8), 2, 2)
    with pytest.raises(ValueError):
        scale_frames_device(torch.zeros((4, 4, 3), dtype=torch.uint8), 2, 2)
