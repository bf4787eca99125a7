"""The boxes file: round trip, one clear InputError per problem (naming the file), the bare-list form."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wav2lip_trt.detection import box_problem, read_boxes, write_boxes
from wav2lip_trt.errors import InputError

W, H = 160, 128
BOXES = [(10, 20, 60, 90), None, (11, 21, 61, 91), (0, 0, 160, 128), (150, 120, 200, 140)]


def document(**changes) -> dict:
    doc = {"format": "wav2lip-trt-boxes", "version": 1, "source": "face.mp4", "width": W, "height": H, "fps": 25.0,
           "frames": len(BOXES), "order": "x1 y1 x2 y2", "boxes": [None if b is None else list(b) for b in BOXES]}
    doc.update(changes)
    return doc


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value))
    return path


def refused(path: Path, *, frames: int | None = len(BOXES), width: int = W, height: int = H) -> str:
    with pytest.raises(InputError) as err:
        read_boxes(path, frames=frames, width=width, height=height)
    message = str(err.value)
    assert str(path) in message
    return message


def test_round_trip(tmp_path):
    path = tmp_path / "boxes.json"
    rows = [np.array(b, dtype=np.int64) if b is not None else None for b in BOXES]  # numpy ints are fine
    write_boxes(path, rows, source=tmp_path / "face.mp4", width=W, height=H, fps=np.float64(29.97))
    assert read_boxes(path, frames=len(BOXES), width=W, height=H) == BOXES
    data = json.loads(path.read_text())
    assert {k: v for k, v in data.items() if k != "boxes"} == {
        "format": "wav2lip-trt-boxes", "version": 1, "source": str(tmp_path / "face.mp4"), "width": W,
        "height": H, "fps": 29.97, "frames": 5, "order": "x1 y1 x2 y2"}
    assert data["boxes"][1] is None
    assert path.read_text().count("\n") > len(BOXES)  # one box per line, editable by hand
    assert [p.name for p in tmp_path.iterdir()] == ["boxes.json"]  # no temporary file left
    result = read_boxes(path, frames=None, width=W, height=H)  # count unknown: not checked
    assert all(type(v) is int for b in result if b is not None for v in b)


def test_empty_round_trip(tmp_path):
    write_boxes(tmp_path / "b.json", [], source="x.mp4", width=W, height=H, fps=25)
    assert read_boxes(tmp_path / "b.json", frames=0, width=W, height=H) == []


def test_writer_refuses_what_the_reader_would(tmp_path):
    with pytest.raises(ValueError, match="box 1 .* is empty"):
        write_boxes(tmp_path / "b.json", [(1, 2, 3, 4), (5, 5, 5, 9)], source="x", width=W, height=H, fps=25)
    with pytest.raises(ValueError, match="4 integers"):
        write_boxes(tmp_path / "b.json", [(1.5, 2, 3, 4)], source="x", width=W, height=H, fps=25)
    with pytest.raises(ValueError, match="fps"):
        write_boxes(tmp_path / "b.json", [], source="x", width=W, height=H, fps=float("nan"))
    assert not (tmp_path / "b.json").exists()


def test_bare_list(tmp_path):
    path = write_json(tmp_path / "mine.json", [[10, 20, 60, 90], None, [1, 1, 2, 2]])
    assert read_boxes(path, frames=3, width=W, height=H) == [(10, 20, 60, 90), None, (1, 1, 2, 2)]
    assert "has 3 boxes, the face input has 4 frames" in refused(path, frames=4)
    assert "box 2 [5, 5, 4, 9] is empty" in refused(write_json(tmp_path / "bad.json", [None, None, [5, 5, 4, 9]]),
                                                    frames=3)


def test_missing_file(tmp_path):
    assert "not found" in refused(tmp_path / "nope.json")


def test_not_json(tmp_path):
    path = tmp_path / "b.json"
    path.write_text('{"format": "wav2lip-trt-boxes", "boxes": [')
    assert "line 1: not valid JSON" in refused(path)
    path.write_bytes(b"\xff\xfe\x00binary")
    assert "cannot read it" in refused(path)


@pytest.mark.parametrize("text, words", [
    ('{"boxes":\n' + "[" * 100_000 + "]" * 100_000 + "}", "line 2: nested more than 32 levels deep"),
    ("[\n[1, 2, 3, 4],\n[1, 2, 3, 99999999999999999999999]]", "line 3: the number 99999999999999999999999 is too large"),
    ("[[1, 2, 3, 1e999]]", "line 1: the number 1e999 is too large for a float"),
    ("[[1, 2, NaN, 4]]", "line 1: NaN is not a JSON number"),
])
def test_deep_or_huge_json_is_one_error_with_its_line(tmp_path, text, words):
    path = tmp_path / "b.json"
    path.write_text(text)
    assert words in refused(path, frames=None)


@pytest.mark.parametrize("value, words", [
    (document(format="something-else"), 'not a wav2lip-trt-boxes file (its "format" is "something-else")'),
    ({k: v for k, v in document().items() if k != "format"}, 'its "format" is null'),
    ("just a string", "holds a JSON str"),
    (document(version=2), "is version 2; this wav2lip-trt reads version 1"),
    (document(order="y1 y2 x1 x2"), 'order "y1 y2 x1 x2" is not supported'),
    (document(width="160"), '"width" is "160", expected a positive integer'),
    (document(boxes={"0": [1, 2, 3, 4]}), '"boxes" is {"0": [1, 2, 3, 4]}, expected a list'),
    (document(frames=7), '"frames" says 7 but it has 5 boxes'),
])
def test_not_this_format(tmp_path, value, words):
    assert words in refused(write_json(tmp_path / "b.json", value))


def test_count_mismatch(tmp_path):
    path = tmp_path / "b.json"
    write_boxes(path, BOXES, source="face.mp4", width=W, height=H, fps=25)
    assert "has 5 boxes, the face input has 150 frames" in refused(path, frames=150)


def test_frame_size_mismatch(tmp_path):
    path = tmp_path / "b.json"
    write_boxes(path, BOXES, source="face.mp4", width=W, height=H, fps=25)
    message = refused(path, width=80, height=64)
    assert f"was made for {W}x{H} frames, the face input's frames are 80x64" in message


@pytest.mark.parametrize("box, words", [
    ([1, 2, 3], "is [1, 2, 3]; a box is 4 integers [x1, y1, x2, y2] or null"),
    ([1, 2, 3, 4.5], "is [1, 2, 3, 4.5]; a box is 4 integers"),
    ([1, 2, 3, 4.0], "is [1, 2, 3, 4.0]; a box is 4 integers"),
    ([1, 2, True, 4], "a box is 4 integers"),
    ("10 20 30 40", 'is "10 20 30 40"; a box is 4 integers'),
    ({"x1": 1}, "a box is 4 integers"),
    ([30, 20, 30, 40], "[30, 20, 30, 40] is empty: it needs x2 > x1 and y2 > y1"),
    ([10, 40, 30, 20], "is empty"),
    ([-5, 20, 30, 40], "[-5, 20, 30, 40] has a negative coordinate"),
    ([10, -1, 30, 40], "has a negative coordinate"),
    ([W, 20, W + 40, 40], f"lies wholly outside the {W}x{H} frame"),
    ([10, H + 3, 30, H + 40], "lies wholly outside"),
    ([10, 20, 2**63 - 1, 40], "has a coordinate beyond 2147483647"),  # an int64 that pads would overflow
])
def test_bad_box(tmp_path, box, words):
    boxes = [None, None, box, None, None]
    message = refused(write_json(tmp_path / "b.json", document(boxes=boxes)))
    assert f"box 2 {words}" in message or ("box 2" in message and words in message), message
    assert box_problem(box, W, H) is not None


def test_boxes_reaching_past_the_edge_are_kept():
    assert box_problem([150, 120, 400, 400], W, H) is None  # S3FD boxes may extend beyond the frame
    assert box_problem(None, W, H) is None
