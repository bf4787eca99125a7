"""Face-box padding and the original's temporal smoothing, for a whole video or as a stream.

The smoothing is the original Wav2Lip ``get_smoothened_boxes``: a forward-looking mean over
5 rows, written back in place into an int64 array. The in-place write makes the last rows
depend on already-smoothed ones and the int64 cast truncates, so both are reproduced exactly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, TypeVar

import numpy as np

K = TypeVar("K")

SMOOTH_WINDOW = 5  # frames averaged per box, looking forward from the current frame


def pad_box(
    box_xyxy: Sequence[int], pads: Sequence[int], frame_height: int, frame_width: int
) -> np.ndarray:
    """Grow (or, with negative pads, shrink) a detected box, clipped to the frame.

    pads = (top, bottom, left, right), the original's ``--pads`` order. The far edges are
    clipped to the frame size itself (a valid slice end), the near edges to 0.
    Returns [x1, y1, x2, y2] int64.
    """
    x1, y1, x2, y2 = (int(v) for v in box_xyxy)
    top, bottom, left, right = (int(p) for p in pads)
    return np.array(
        [
            max(0, x1 - left),
            max(0, y1 - top),
            min(frame_width, x2 + right),
            min(frame_height, y2 + bottom),
        ],
        dtype=np.int64,
    )


def smooth_boxes(boxes: np.ndarray, window: int = SMOOTH_WINDOW) -> np.ndarray:
    """The original's smoothing of a whole (N, 4) int64 box track; returns a new array.

    Row i becomes the truncated mean of rows [i, i + window), or of the Python slice
    ``[N - window:]`` once that runs past the end; rows are overwritten in order, so the
    tail windows (and every window when N < window) see already-smoothed rows.
    """
    out = _as_int_rows(boxes, ndim=2).copy()
    n = len(out)
    for i in range(n):
        out[i] = np.mean(out[i : i + window] if i + window <= n else out[n - window :], axis=0)
    return out


class BoxSmoother(Generic[K]):
    """:func:`smooth_boxes` over a stream, with a ``window - 1`` row look-ahead.

    A row is final as soon as the ``window - 1`` rows after it have arrived, because those
    windows only hold not-yet-smoothed rows. At the end of the stream the remaining rows are
    smoothed in place against the last emitted row, which is the only smoothed row a tail
    window can reach. At most ``window`` pending rows plus that one row are held.
    """

    def __init__(self, window: int = SMOOTH_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"smoothing window must be >= 1, got {window}")
        self.window = window
        self._pending: deque[tuple[K, np.ndarray]] = deque()
        self._last: np.ndarray | None = None

    def push(self, key: K, row: np.ndarray) -> list[tuple[K, np.ndarray]]:
        """Add the next row; returns the (key, smoothed row) pairs that became final (0 or 1)."""
        self._pending.append((key, _as_int_rows(row, ndim=1).copy()))
        if len(self._pending) < self.window:
            return []
        rows = np.stack([r for _, r in self._pending])
        smoothed = np.empty_like(rows[0])
        smoothed[:] = np.mean(rows, axis=0)
        first_key, _ = self._pending.popleft()
        self._last = smoothed
        return [(first_key, smoothed.copy())]

    def finish(self) -> list[tuple[K, np.ndarray]]:
        """Flush the rows still pending at the end of the stream, in order; resets the smoother."""
        if not self._pending:
            self._last = None
            return []
        keys = [k for k, _ in self._pending]
        tail = [r for _, r in self._pending]
        if self._last is not None:
            # N >= window: the tail windows are rows [N - window, N), the first already emitted.
            work, start, first = np.stack([self._last, *tail]), 0, 1
        else:
            # N < window: the slice start N - window is negative and wraps to 2N - window.
            n = len(tail)
            work, start, first = np.stack(tail), max(0, 2 * n - self.window), 0
        out = []
        for j, key in enumerate(keys):
            work[first + j] = np.mean(work[start:], axis=0)
            out.append((key, work[first + j].copy()))
        self._pending.clear()
        self._last = None
        return out


def smooth_stream(
    items: Iterable[tuple[K, np.ndarray]], window: int = SMOOTH_WINDOW
) -> Iterator[tuple[K, np.ndarray]]:
    """Yield ``(key, smoothed_row)`` in input order, as :func:`smooth_boxes` on the whole track.

    Keys travel with their rows so the caller can carry frames or indices through the
    ``window - 1`` frame delay.
    """
    smoother: BoxSmoother[K] = BoxSmoother(window)
    for key, row in items:
        yield from smoother.push(key, row)
    yield from smoother.finish()


def _as_int_rows(rows: np.ndarray, ndim: int) -> np.ndarray:
    arr = np.asarray(rows)
    if arr.ndim != ndim or arr.dtype.kind not in "iu":
        raise ValueError(f"expected a {ndim}-D integer box array, got {arr.shape} {arr.dtype}")
    return arr.astype(np.int64, copy=False)
