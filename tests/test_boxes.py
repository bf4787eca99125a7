import numpy as np
import pytest

from wav2lip_trt.boxes import BoxSmoother, pad_box, smooth_boxes, smooth_stream


def reference_smooth(boxes: np.ndarray, T: int = 5) -> np.ndarray:
    """The spec's loop, literally: in place on an int64 array, Python slices."""
    boxes = boxes.copy()
    for i in range(len(boxes)):
        window = boxes[len(boxes) - T :] if i + T > len(boxes) else boxes[i : i + T]
        boxes[i] = np.mean(window, axis=0)
    return boxes


def rows(*values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# --- pad_box ---------------------------------------------------------------------------------


def test_pad_grows_box():
    out = pad_box((10, 20, 50, 60), (0, 10, 0, 0), frame_height=100, frame_width=80)
    assert out.dtype == np.int64
    assert out.tolist() == [10, 20, 50, 70]


def test_pad_clips_at_zero_and_frame_size():
    out = pad_box((3, 5, 70, 95), (10, 10, 10, 10), frame_height=100, frame_width=80)
    assert out.tolist() == [0, 0, 80, 100]


def test_pad_each_side_goes_to_its_own_edge():
    # pads = (top, bottom, left, right)
    out = pad_box((20, 20, 40, 40), (1, 2, 3, 4), frame_height=100, frame_width=100)
    assert out.tolist() == [17, 19, 44, 42]


def test_negative_pads_shrink():
    out = pad_box((20, 20, 40, 40), (-1, -2, -3, -4), frame_height=100, frame_width=100)
    assert out.tolist() == [23, 21, 36, 38]


def test_box_beyond_frame_is_clipped_even_without_pads():
    # S3FD boxes are clipped only at 0; x2/y2 may exceed the frame until padding clips them.
    out = pad_box((0, 0, 130, 90), (0, 0, 0, 0), frame_height=64, frame_width=128)
    assert out.tolist() == [0, 0, 128, 64]


# --- smooth_boxes: hand-computed cases -------------------------------------------------------


def test_single_row_unchanged():
    assert smooth_boxes(rows([1, 2, 3, 4])).tolist() == [[1, 2, 3, 4]]


def test_two_rows_mean_of_all_recursively():
    # row0 = mean(r0, r1); row1 = mean(new row0, r1)
    out = smooth_boxes(rows([0, 0, 0, 0], [10, 20, 30, 41]))
    assert out.tolist() == [[5, 10, 15, 20], [7, 15, 22, 30]]


def test_three_rows_mean_of_last_two_recursively():
    # slice [-2:] = rows 1, 2; row0 = row1 = mean(r1, r2); row2 = mean(new row1, r2)
    out = smooth_boxes(rows([100, 100, 100, 100], [0, 0, 0, 1], [10, 20, 30, 40]))
    assert out.tolist() == [[5, 10, 15, 20], [5, 10, 15, 20], [7, 15, 22, 30]]


def test_four_rows_all_become_last():
    out = smooth_boxes(rows([1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3], [9, 8, 7, 6]))
    assert out.tolist() == [[9, 8, 7, 6]] * 4


def test_five_rows_tail_uses_smoothed_rows():
    r = rows([0, 0, 0, 0], [5, 5, 5, 5], [10, 10, 10, 10], [15, 15, 15, 15], [20, 20, 20, 24])
    # i=0: full window mean = [10, 10, 10, 10.8] -> [10, 10, 10, 10]
    # i=1: rows 0..4, row0 smoothed: (10+5+10+15+20)/5 = 12, last col (10+5+10+15+24)/5 = 12.8
    # i=2: (10+12+10+15+20)/5 = 13.4 -> 13, last (10+12+10+15+24)/5 = 14.2 -> 14
    # i=3: (10+12+13+15+20)/5 = 14, last (10+12+14+15+24)/5 = 15
    # i=4: (10+12+13+14+20)/5 = 13.8 -> 13, last (10+12+14+15+24)/5 = 15
    out = smooth_boxes(r)
    assert out.tolist() == [
        [10, 10, 10, 10],
        [12, 12, 12, 12],
        [13, 13, 13, 14],
        [14, 14, 14, 15],
        [13, 13, 13, 15],
    ]


def test_six_rows_in_place_tail():
    r = rows(*[[v] * 4 for v in (0, 10, 20, 30, 40, 50)])
    # i=0: mean(0..40) = 20; i=1: mean(10..50) = 30 (full window, originals)
    # i=2..5: rows 1..5 = [30, 20, 30, 40, 50] -> 34, then [30, 34, 30, 40, 50] -> 36.8 -> 36,
    # then [30, 34, 36, 40, 50] -> 38, then [30, 34, 36, 38, 50] -> 37.6 -> 37
    out = smooth_boxes(r)
    assert out[:, 0].tolist() == [20, 30, 34, 36, 38, 37]


def test_truncates_toward_zero():
    out = smooth_boxes(rows([-3, 3, 0, 0], [-4, 4, 0, 1]))
    # mean(-3, -4) = -3.5 -> -3; mean(3, 4) = 3.5 -> 3; mean(0, 1) = 0.5 -> 0
    assert out[0].tolist() == [-3, 3, 0, 0]


def test_does_not_mutate_input():
    r = rows([0, 0, 0, 0], [10, 10, 10, 10])
    smooth_boxes(r)
    assert r.tolist() == [[0, 0, 0, 0], [10, 10, 10, 10]]


def test_rejects_float_boxes():
    with pytest.raises(ValueError, match="integer"):
        smooth_boxes(np.zeros((3, 4)))


@pytest.mark.parametrize("n", range(1, 16))
def test_matches_reference_loop(n):
    r = np.random.default_rng(n).integers(-500, 2000, size=(n, 4))
    assert np.array_equal(smooth_boxes(r), reference_smooth(r))


# --- streaming -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(0, 41))
def test_stream_equals_batch(n):
    r = np.random.default_rng(100 + n).integers(-1000, 1000, size=(n, 4)).astype(np.int64)
    keys = [f"frame{i}" for i in range(n)]
    out = list(smooth_stream(zip(keys, r)))
    assert [k for k, _ in out] == keys
    expected = reference_smooth(r) if n else np.zeros((0, 4), np.int64)
    assert np.array_equal(np.array([v for _, v in out], dtype=np.int64).reshape(n, 4), expected)


@pytest.mark.parametrize("window", [1, 2, 3, 7])
def test_stream_equals_batch_other_windows(window):
    for n in range(0, 20):
        r = np.random.default_rng(n).integers(-99, 99, size=(n, 4))
        out = [v for _, v in smooth_stream(enumerate(r), window=window)]
        expected = reference_smooth(r, T=window)
        assert np.array_equal(np.array(out, dtype=np.int64).reshape(n, 4), expected), (window, n)
        assert np.array_equal(smooth_boxes(r, window=window), expected)


def test_stream_is_lazy_and_holds_at_most_window_rows():
    window = 5
    smoother = BoxSmoother(window)
    r = np.random.default_rng(0).integers(0, 100, size=(30, 4))
    emitted = []
    for i, row in enumerate(r):
        got = smoother.push(i, row)
        assert len(smoother._pending) <= window - 1
        assert smoother._last is None or smoother._last.shape == (4,)
        assert len(got) == (1 if i >= window - 1 else 0)
        emitted += got
    emitted += smoother.finish()
    assert [k for k, _ in emitted] == list(range(30))
    assert np.array_equal(np.array([v for _, v in emitted]), reference_smooth(r))
    assert not smoother._pending and smoother._last is None


def test_stream_yields_before_input_ends():
    def rows_then_fail():
        for i in range(5):
            yield i, np.array([i, i, i, i])
        raise RuntimeError("not consumed that far")

    gen = smooth_stream(rows_then_fail())
    key, row = next(gen)
    assert key == 0 and row.tolist() == [2, 2, 2, 2]


def test_emitted_rows_are_not_aliased():
    r = rows(*[[v] * 4 for v in range(8)])
    out = list(smooth_stream(enumerate(r)))
    out[0][1][:] = -1
    assert out[1][1].tolist() != [-1] * 4
    assert r[0].tolist() == [0] * 4
