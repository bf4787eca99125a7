from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from wav2lip_trt.errors import InputError
from wav2lip_trt.samples import talking_face_frames, write_video
from wav2lip_trt.video import FaceSource, FrameTransform, natural_key

from media import decode_frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "face.mp4"
    return write_video(path, talking_face_frames(12, 160, 128), 25.0)


def test_video_frames_equal_opencv_decode(clip: Path) -> None:
    source = FaceSource(clip)
    assert source.kind == "video"
    assert (source.info.width, source.info.height, source.info.fps) == (160, 128, 25.0)
    frames = np.stack(list(source.frames()))
    np.testing.assert_array_equal(frames, decode_frames(clip))
    assert len(list(source.frames(5))) == 5
    # Iterating again starts over (the pipeline loops videos this way).
    np.testing.assert_array_equal(next(source.frames()), frames[0])


def test_transforms_follow_reference_order(clip: Path) -> None:
    raw = decode_frames(clip)[3]
    transform = FrameTransform(resize_factor=2, rotate=True, crop=(5, -1, 10, 50))
    source = FaceSource(clip, transform=transform)
    expected = cv2.rotate(cv2.resize(raw, (80, 64)), cv2.ROTATE_90_CLOCKWISE)[5:, 10:50]
    np.testing.assert_array_equal(list(source.frames(4))[3], expected)
    assert (source.info.width, source.info.height) == (40, 80 - 5)


def test_crop_keeps_python_slice_semantics() -> None:
    frame = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    np.testing.assert_array_equal(FrameTransform(crop=(1, -2, 0, -1))(frame), frame[1:-2, :])


def test_image_ignores_video_transforms(tmp_path: Path) -> None:
    image = next(talking_face_frames(1, 64, 48))
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), image)
    source = FaceSource(path, fps=30.0, transform=FrameTransform(resize_factor=2, rotate=True))
    assert source.kind == "image" and source.info.fps == 30.0
    np.testing.assert_array_equal(list(source.frames()), [image])


def test_frames_folder_natural_order(tmp_path: Path) -> None:
    frames = list(talking_face_frames(12, 64, 48))
    for i, frame in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), frame)
    (tmp_path / "notes.txt").write_text("not a frame")
    source = FaceSource(tmp_path, fps=12.5)
    assert source.kind == "frames" and source.info.frame_count == 12 and source.info.fps == 12.5
    np.testing.assert_array_equal(np.stack(list(source.frames())), np.stack(frames))
    assert sorted(["frame10.png", "frame2.png", "Frame1.png"], key=natural_key) == ["Frame1.png", "frame2.png", "frame10.png"]


def test_frames_folder_bad_members(tmp_path: Path) -> None:
    frames = list(talking_face_frames(3, 64, 48))
    for i, frame in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{i}.png"), frame)
    cv2.imwrite(str(tmp_path / "3.png"), frames[0][:40])
    with pytest.raises(InputError, match=r"3\.png: size 64x40 differs"):
        list(FaceSource(tmp_path).frames())
    (tmp_path / "3.png").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"3\.png: not a readable image"):
        list(FaceSource(tmp_path).frames())


@pytest.mark.parametrize("name, content, message", [
    ("missing.mp4", None, "face input not found"),
    ("broken.mp4", b"not a video at all", "cannot open|no frames"),
    ("broken.jpg", b"\xff\xd8 nope", "not a readable image"),
])
def test_bad_inputs_name_the_file(tmp_path: Path, name: str, content: bytes | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        FaceSource(path)
    assert name in str(err.value)


def test_crop_to_nothing_is_an_error(clip: Path) -> None:
    with pytest.raises(InputError, match="empty after"):
        FaceSource(clip, transform=FrameTransform(crop=(200, -1, 0, -1)))
