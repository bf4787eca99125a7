"""Per-frame face boxes as a JSON file: what ``wav2lip-trt detect --json`` writes and ``infer --boxes`` reads.

A boxes file lets a user run detection once, inspect or edit it (for instance keep the speaker's box
when a video shows several faces) and feed it back. The boxes are RAW S3FD-style boxes, before
``--pads`` and smoothing, so a run reading them behaves exactly as if S3FD had found them: pads,
smoothing and the missing-face policy still apply afterwards.

Format (version 1)::

    {
      "format": "wav2lip-trt-boxes",
      "version": 1,
      "source": "speaker.mp4",      # the face input it was made from (informative)
      "width": 1280, "height": 720,  # frame size after --resize_factor/--crop/--rotate
      "fps": 25.0,
      "frames": 3,                   # = len(boxes)
      "order": "x1 y1 x2 y2",
      "boxes": [
        [412, 96, 604, 330],
        null,                        # no face in this frame
        [415, 97, 606, 331]
      ]
    }

Coordinates are integer pixels, x to the right and y down, x2/y2 exclusive as in S3FD's output:
0 <= x1 < x2, 0 <= y1 < y2, and the box must overlap the frame (it may reach past its right or
bottom edge, as S3FD boxes do, up to :data:`MAX_COORDINATE`). A bare JSON list of boxes
(``[[x1, y1, x2, y2] | null, ...]``) is accepted too, for users' own tools; it gets the same checks on
count and values. The file is read by :func:`~wav2lip_trt.json_input.load_json_text` (bounded nesting
and number size). Every problem is one :class:`~wav2lip_trt.errors.InputError` naming the file.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..files import atomic_write_text
from ..json_input import JsonInputError, load_json_text

if TYPE_CHECKING:
    from ..video import FaceSource

FORMAT = "wav2lip-trt-boxes"
VERSION = 1
ORDER = "x1 y1 x2 y2"
MAX_COORDINATE = 2**31 - 1  # far beyond any frame; keeps pads and smoothing well inside int64
Box = tuple[int, int, int, int]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def box_problem(box: object, width: int, height: int) -> str | None:
    """What is wrong with one box (a plain JSON value) for a ``width`` x ``height`` frame, or None.

    Shared by the reader and the writer, so a file :func:`write_boxes` wrote always reads back.
    """
    if box is None:
        return None
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_int(v) for v in box):
        shown = json.dumps(box) if _jsonable(box) else repr(box)
        return f"is {shown}; a box is 4 integers [{', '.join(ORDER.split())}] or null"
    x1, y1, x2, y2 = box
    if min(box) < 0:
        return f"{list(box)} has a negative coordinate"
    if max(box) > MAX_COORDINATE:
        return f"{list(box)} has a coordinate beyond {MAX_COORDINATE}"
    if x2 <= x1 or y2 <= y1:
        return f"{list(box)} is empty: it needs x2 > x1 and y2 > y1"
    if x1 >= width or y1 >= height:
        return f"{list(box)} lies wholly outside the {width}x{height} frame"
    return None


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def write_boxes(path: Path, boxes: Iterable[Sequence[int] | None], *, source: str | Path, width: int, height: int,
                fps: float) -> None:
    """Write ``boxes`` (x1, y1, x2, y2 or None per frame) as a version-1 boxes file, atomically.

    Raises ValueError for a box :func:`read_boxes` would refuse (the caller decides, e.g. writes None).
    """
    atomic_write_text(Path(path), boxes_text(boxes, source=source, width=width, height=height, fps=fps))


def boxes_text(boxes: Iterable[Sequence[int] | None], *, source: str | Path, width: int, height: int,
               fps: float) -> str:
    """The text of a version-1 boxes file (one box per line); ValueError as :func:`write_boxes`."""
    width, height = operator.index(width), operator.index(height)
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive, got {width} x {height}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    rows: list[list[int] | None] = []
    for index, box in enumerate(boxes):
        try:
            row = None if box is None else [operator.index(v) for v in box]
        except TypeError:
            raise ValueError(f"box {index} is {box!r}; a box is 4 integers or None") from None
        problem = box_problem(row, width, height)
        if problem is not None:
            raise ValueError(f"box {index} {problem}")
        rows.append(row)
    header = {"format": FORMAT, "version": VERSION, "source": str(source), "width": width, "height": height,
              "fps": float(fps), "frames": len(rows), "order": ORDER}
    lines = [f"  {json.dumps(name)}: {json.dumps(value)}," for name, value in header.items()]
    body = ",\n".join(f"    {json.dumps(row)}" for row in rows)
    return "{\n" + "\n".join(lines) + '\n  "boxes": [\n' + body + ("\n" if rows else "") + "  ]\n}\n"


def read_boxes(path: Path, *, frames: int | None, width: int, height: int) -> list[Box | None]:
    """The boxes of a boxes file, checked against the face input (``frames`` None: count unknown, not checked).

    Raises :class:`InputError` naming the file for: not JSON, not this format, another version, a
    count other than ``frames``, another frame size, and any box :func:`box_problem` refuses.
    """
    path = Path(path)
    label = f"boxes file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{label} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{label}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = load_json_text(text)
    except JsonInputError as exc:
        raise InputError(f"{label}, line {exc.line}: {exc.problem}") from None
    if isinstance(data, list):
        boxes = data
    elif isinstance(data, dict):
        boxes = _checked_document(data, label, width, height)
    else:
        raise InputError(f"{label} is not a {FORMAT} file: it holds a JSON {type(data).__name__}, "
                         "expected an object or a list of boxes")
    if frames is not None and len(boxes) != frames:
        raise _count_error(label, len(boxes), frames)
    result: list[Box | None] = []
    for index, box in enumerate(boxes):
        problem = box_problem(box, width, height)
        if problem is not None:
            raise InputError(f"{label}: box {index} {problem}")
        result.append(None if box is None else (box[0], box[1], box[2], box[3]))
    return result


def read_boxes_for(path: Path, source: FaceSource, *, static: bool) -> list[Box | None]:
    """The boxes of a boxes file for the opened face input: its frame size, and one box per frame.

    Runs before any model loads, so a wrong file fails at once. A ``static`` run (``--static``, or
    an image) shows only the first frame, so a single box is accepted there too. A video's own frame
    count is its container's estimate: when that disagrees with the file, the frames are counted
    (:meth:`~wav2lip_trt.video.FaceSource.exact_frame_count`), so a mismatch either way is refused
    and a right file for a video with a wrong header is not.
    """
    info = source.info
    label = f"boxes file {path}"
    boxes = read_boxes(path, frames=None, width=info.width, height=info.height)
    if static and len(boxes) == 1:
        return boxes
    frames = info.frame_count
    if len(boxes) != frames and info.kind == "video":
        frames = source.exact_frame_count()
    if len(boxes) != frames:
        raise _count_error(label, len(boxes), frames, static=static)
    return boxes


def _count_error(label: str, boxes: int, frames: int | None, *, static: bool = False) -> InputError:
    return InputError(f"{label} has {boxes} boxes, the face input has {frames} frames; give one box (or null) per "
                      f"frame{' (or one box for --static)' if static else ''}")


def _checked_document(data: dict, label: str, width: int, height: int) -> list:
    """The ``boxes`` list of a version-1 document, after checking its header."""
    if data.get("format") != FORMAT:
        raise InputError(f"{label} is not a {FORMAT} file (its \"format\" is {json.dumps(data.get('format'))})")
    if data.get("version") != VERSION:
        raise InputError(f"{label} is version {json.dumps(data.get('version'))}; this wav2lip-trt reads "
                         f"version {VERSION}")
    if data.get("order", ORDER) != ORDER:
        raise InputError(f"{label}: order {json.dumps(data.get('order'))} is not supported; boxes must be {ORDER!r}")
    for name in ("width", "height"):
        if not _is_int(data.get(name)) or data[name] < 1:
            raise InputError(f"{label}: \"{name}\" is {json.dumps(data.get(name))}, expected a positive integer")
    if (data["width"], data["height"]) != (width, height):
        raise InputError(f"{label} was made for {data['width']}x{data['height']} frames, the face input's frames "
                         f"are {width}x{height} (after --resize_factor, --crop, --rotate)")
    boxes = data.get("boxes")
    if not isinstance(boxes, list):
        raise InputError(f"{label}: \"boxes\" is {json.dumps(boxes)[:40]}, expected a list of boxes")
    if "frames" in data and data["frames"] != len(boxes):
        raise InputError(f"{label}: \"frames\" says {json.dumps(data['frames'])} but it has {len(boxes)} boxes")
    return boxes
