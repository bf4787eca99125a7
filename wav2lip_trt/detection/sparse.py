"""``--detect-every K``: run S3FD on every K-th frame and interpolate the boxes in between.

S3FD is the most expensive stage per frame on long videos; a talking head moves little within a
few frames, so detecting frames 0, K, 2K, ... (and always the last frame, so the tail is bounded
by a real detection rather than extrapolated) and interpolating the raw boxes costs about 1/K of
the detection time. The interpolation happens on the raw S3FD boxes (x1, y1, x2, y2), *before*
``--pads`` and smoothing, so those stages see a box track of the same kind as with K = 1.
K = 1 detects every frame and returns the detections unchanged, i.e. today's behaviour.

Interpolation rule, for a frame i strictly between consecutive detected frames a < b that both
found a face, per coordinate::

    round(v_a + (v_b - v_a) * (i - a) / (b - a))  =  round((v_a * (b - i) + v_b * (i - a)) / (b - a))

computed in exact integer arithmetic (no float drift, however long the video) and rounded half
away from zero (:func:`round_div`); S3FD's coordinates are >= 0, where this is the same as half up.
If either endpoint found no face, the frames strictly between get ``None``: no face is invented
where the detector did not confirm one on both sides, and ``--on-missing-face`` then decides what
those frames do (``error`` names the first such frame, although S3FD did not run on it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Final, TypeVar

from ..errors import InputError

Box = tuple[int, int, int, int]
"""(x1, y1, x2, y2) as :mod:`wav2lip_trt.detect` chooses it."""

T = TypeVar("T")
K = TypeVar("K")


class _NotDetected:
    """Marks a frame S3FD did not run on (``None`` already means "ran, found no face")."""

    _instance: _NotDetected | None = None

    def __new__(cls) -> _NotDetected:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_DETECTED"

    def __reduce__(self) -> str:
        return "NOT_DETECTED"


NOT_DETECTED: Final = _NotDetected()
"""The detection value :func:`interpolate_stream` takes for frames between the detected ones."""


def check_every(every: int) -> int:
    """Validate ``--detect-every``; returns it."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise InputError(f"--detect-every must be an integer >= 1 (1 = detect every frame), got {every!r}")
    return every


def needs_detection(index: int, every: int, last: bool) -> bool:
    """Whether frame ``index`` gets S3FD: a multiple of ``every``, or the last frame of the video."""
    return last or index % check_every(every) == 0


def detected_frames(total: int, every: int) -> list[int]:
    """The frame indices S3FD runs on for a ``total``-frame video: 0, K, 2K, ... and total - 1.

    Sorted and unique; empty for an empty video. ``every = 1`` gives every frame.
    """
    check_every(every)
    if total < 0:
        raise ValueError(f"frame count must be >= 0, got {total}")
    frames = list(range(0, total, every))
    if total and frames[-1] != total - 1:
        frames.append(total - 1)
    return frames


def round_div(num: int, den: int) -> int:
    """``num / den`` rounded to the nearest integer, halves away from zero, in exact integers.

    ``den`` > 0. For num >= 0 this is ``(2 * num + den) // (2 * den)`` (half up); negative
    numerators mirror it so that interpolation is symmetric under a sign flip.
    """
    if den <= 0:
        raise ValueError(f"denominator must be > 0, got {den}")
    q = (2 * abs(num) + den) // (2 * den)
    return q if num >= 0 else -q


def interpolate_box(a: int, box_a: Box | None, b: int, box_b: Box | None, i: int) -> Box | None:
    """The box of frame ``a <= i <= b`` from the detections at ``a < b`` (module docstring's rule)."""
    if not a <= i <= b or a >= b:
        raise ValueError(f"frame {i} is not within the detected frames {a} < {b}")
    if i == a:
        return _as_box(box_a)
    if i == b:
        return _as_box(box_b)
    if box_a is None or box_b is None:
        return None
    return tuple(  # type: ignore[return-value]
        round_div(int(va) * (b - i) + int(vb) * (i - a), b - a) for va, vb in zip(box_a, box_b)
    )


def interpolate_boxes(total: int, detected: Mapping[int, Box | None]) -> list[Box | None]:
    """One raw box (or None) per frame of a ``total``-frame video from the frames S3FD ran on.

    ``detected`` maps detected frame indices (normally :func:`detected_frames`) to S3FD's box or
    None; it must hold frame 0 and frame ``total - 1``, so every other frame lies between two
    detections. Detected frames keep their box exactly; the rest follow the module docstring.
    """
    if total < 0:
        raise ValueError(f"frame count must be >= 0, got {total}")
    keys = sorted(detected)
    if total == 0:
        if keys:
            raise ValueError(f"detections {keys} given for an empty video")
        return []
    if keys[:1] != [0] or keys[-1] != total - 1:
        raise ValueError(f"frames 0 and {total - 1} must be detected, got detections for {keys}")
    out: list[Box | None] = [_as_box(detected[0])] * total
    for a, b in zip(keys, keys[1:]):
        for i in range(a + 1, b + 1):
            out[i] = interpolate_box(a, detected[a], b, detected[b], i)
    return out


def interpolate_stream(items: Iterable[tuple[K, Box | None | _NotDetected]], every: int) -> Iterator[tuple[K, Box | None]]:
    """:func:`interpolate_boxes` over a stream: ``(key, detection)`` in, ``(key, box)`` out, in order.

    ``detection`` is S3FD's box or None for a frame it ran on, :data:`NOT_DETECTED` otherwise; keys
    travel with their boxes (a frame index, or ``(index, frame)`` so frames ride the delay). The
    items must follow the schedule: the n-th item (from 0) is detected exactly when n is a multiple
    of ``every``, or it is the last item (:func:`needs_detection`; :func:`mark_last` tells the
    caller which is last without knowing the frame count). A break of the schedule is a ValueError.

    Look-ahead: a detected item is yielded as soon as it is consumed, together with the undetected
    items before it; an undetected item waits for the next detection, at most ``every - 1`` items
    later. So at most ``every`` items are held (``every - 1`` waiting plus the detection that
    releases them), and after yielding item n the input has been consumed at most up to item
    n + every - 1. (Detecting in batches of B scheduled frames upstream adds its own B * every.)
    """
    check_every(every)
    waiting: list[K] = []
    prev: tuple[int, Box | None] | None = None  # (position, box) of the last detected item
    position = -1
    ended = False  # an off-schedule detection was seen: it must have been the last item
    for key, det in items:
        position += 1
        if ended:
            raise ValueError(f"item {position - 1} was detected off the every-{every} schedule but was not the last")
        if det is NOT_DETECTED:
            if position % every == 0:
                raise ValueError(f"item {position} must be detected (every {every}), got NOT_DETECTED")
            waiting.append(key)
            continue
        box = _as_box(det)  # type: ignore[arg-type]
        ended = position % every != 0
        if prev is not None:
            a, box_a = prev
            for offset, waiting_key in enumerate(waiting, start=a + 1):
                yield waiting_key, interpolate_box(a, box_a, position, box, offset)
        waiting.clear()
        prev = (position, box)
        yield key, box
    if waiting:
        raise ValueError(f"the last item ({position}) must be detected, got NOT_DETECTED")


def mark_last(items: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """``(item, is_last)`` with a one-item look-ahead, for streams of unknown length."""
    iterator = iter(items)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield current, False
        current = following
    yield current, True


def _as_box(box: Box | None) -> Box | None:
    if box is None:
        return None
    if len(box) != 4:
        raise ValueError(f"expected an (x1, y1, x2, y2) box, got {box!r}")
    x1, y1, x2, y2 = (int(v) for v in box)
    return x1, y1, x2, y2
