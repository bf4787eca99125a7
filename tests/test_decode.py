"""Decoders: OpenCV batches equal FaceSource's frames; DALI is close to them and streams in batches."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from media import run_ffmpeg
from wav2lip_trt.decode import (
    DaliDecoder,
    OpenCVDecoder,
    open_decoder,
    orient_frames,
    probe_video,
    transform_frames,
)
from wav2lip_trt.errors import InputError, MissingDependencyError
from wav2lip_trt.execution import ReadyBatch
from wav2lip_trt.stages import prefetch
from wav2lip_trt.video import FaceSource, FrameTransform

TRANSFORMS = [
    FrameTransform(),
    FrameTransform(resize_factor=2, rotate=True, crop=(3, -1, 5, 40)),
    FrameTransform(resize_factor=3, crop=(0, 30, 2, -1)),
]

# DALI's YUV->RGB against OpenCV's swscale on the smooth clip below, per-pixel absolute difference.
# Measured with DALI 2.4 on CPU (96x64 and 320x240): VP9 mean 1.20-1.24, 99th percentile 2-3, max 4-6;
# MJPEG mean 0.77-0.95, 99th percentile 2-3, max 4-6. NVDEC's conversion (BT.601, bilinear chroma) is
# DALI's own GPU kernel, hence the margin. Swapped channels or a frame off by one give means in the tens.
CLOSE_MEAN = 2.5
CLOSE_P99 = 8


def make_clip(
    path: Path, codec: str, *, frames: int, size: tuple[int, int] = (96, 64), source: str = "gradients",
    pix_fmt: str = "yuv420p", extra: tuple[str, ...] = (),
) -> Path:
    """``frames`` frames of a lavfi source at 25 fps; ``gradients`` is smooth, ``testsrc`` has hard edges."""
    w, h = size
    spec = f"{source}=size={w}x{h}:rate=25"
    if source == "gradients":  # fixed colours: the default picks random ones on every run
        spec += ":c0=0x3050a0:c1=0xd0a070:speed=0.05:seed=1"
    run_ffmpeg("-f", "lavfi", "-i", spec, "-frames:v", str(frames), "-c:v", codec, "-pix_fmt", pix_fmt, *extra, path)
    return path


def with_display_rotation(src: Path, dst: Path, degrees: int) -> Path:
    """A stream copy of ``src`` whose container says "display turned by ``degrees``" (ffmpeg >= 6)."""
    try:
        run_ffmpeg("-display_rotation", str(degrees), "-i", src, "-c", "copy", dst)
    except RuntimeError as exc:
        pytest.skip(f"this ffmpeg cannot write display rotation metadata: {str(exc).splitlines()[-1]}")
    return dst


def reference(path: Path, transform: FrameTransform = FrameTransform(), limit: int | None = None) -> np.ndarray:
    return np.stack(list(FaceSource(path, transform=transform).frames(limit)))


def decoded(decoder, limit: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Consume like the pipeline: in another thread than the decoder's, on a stream of its own."""
    consumer = torch.cuda.Stream(decoder.device) if decoder.device.type == "cuda" else None
    ready = list(prefetch(decoder.frames(limit), 2, "decode"))  # produced in a worker thread
    batches = []
    for item in ready:
        assert isinstance(item, ReadyBatch)
        batch = item.wait(consumer)
        assert batch.dtype == torch.uint8 and batch.ndim == 4 and batch.shape[-1] == 3
        assert batch.device == decoder.device
        if consumer is None:
            batches.append(batch)
            continue
        with torch.cuda.stream(consumer):
            batches.append(batch.clone())  # consumer work, ordered only by the batch's event
    if consumer is not None:
        consumer.synchronize()
    return torch.cat(batches).cpu().numpy(), [b.shape[0] for b in batches]


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.mean() <= CLOSE_MEAN, diff.mean()
    assert np.percentile(diff, 99) <= CLOSE_P99, np.percentile(diff, 99)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 frames of testsrc, 96x64, MPEG-4 (OpenCV decodes it; DALI on CPU does not)."""
    return make_clip(tmp_path_factory.mktemp("dec") / "clip.mp4", "mpeg4", frames=10, source="testsrc")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """frame1..frame7 as PNG and JPEG, smooth random content, 80x60."""
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for i in range(1, 8):
        image = cv2.GaussianBlur(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (9, 9), 0)
        cv2.imwrite(str(root / f"frame{i}.{'png' if i % 2 else 'jpg'}"), image)
    return root


# --- OpenCV ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("transform", TRANSFORMS, ids=["identity", "resize2-rotate-crop", "resize3-crop"])
def test_opencv_batches_equal_face_source(clip: Path, transform: FrameTransform) -> None:
    decoder = open_decoder(clip, kind="opencv", transform=transform, batch=4)
    assert isinstance(decoder, OpenCVDecoder) and decoder.info == FaceSource(clip, transform=transform).info
    frames, sizes = decoded(decoder)
    assert sizes == [4, 4, 2]
    np.testing.assert_array_equal(frames, reference(clip, transform))


@pytest.mark.parametrize(("limit", "sizes"), [(None, [3, 3, 3, 1]), (0, []), (1, [1]), (3, [3]), (7, [3, 3, 1]), (50, [3, 3, 3, 1])])
def test_opencv_limit_and_batch_boundaries(clip: Path, limit: int | None, sizes: list[int]) -> None:
    decoder = open_decoder(clip, kind="opencv", batch=3)
    if not sizes:
        assert list(decoder.frames(limit)) == []
        return
    frames, got = decoded(decoder, limit)
    assert got == sizes
    np.testing.assert_array_equal(frames, reference(clip, limit=limit))
    np.testing.assert_array_equal(decoded(decoder, limit)[0], frames)  # every call starts over


def test_opencv_folder_and_image(folder: Path) -> None:
    frames, sizes = decoded(open_decoder(folder, kind="opencv", batch=4))
    assert sizes == [4, 3]
    np.testing.assert_array_equal(frames, reference(folder))
    image, sizes = decoded(open_decoder(folder / "frame2.jpg", batch=4))
    assert sizes == [1]
    np.testing.assert_array_equal(image[0], cv2.imread(str(folder / "frame2.jpg")))


def test_opencv_rejects_bad_options(clip: Path) -> None:
    with pytest.raises(InputError, match="at least 1"):
        open_decoder(clip, kind="opencv", batch=0)
    with pytest.raises(InputError, match="ring"):
        open_decoder(clip, kind="opencv", ring=0)


# --- device transforms ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(37, 53), (64, 96), (91, 40)])
@pytest.mark.parametrize(
    "transform",
    TRANSFORMS[1:] + [FrameTransform(rotate=True), FrameTransform(crop=(2, 20, 3, 30)), FrameTransform(resize_factor=4)],
    ids=["resize2-rotate-crop", "resize3-crop", "rotate", "crop", "resize4"],
)
def test_transform_frames_equals_frame_transform(size: tuple[int, int], transform: FrameTransform) -> None:
    rng = np.random.default_rng(size[0])
    frames = rng.integers(0, 256, (3, *size, 3), dtype=np.uint8)
    got = transform_frames(torch.from_numpy(frames), transform).numpy()
    np.testing.assert_array_equal(got, np.stack([transform(f) for f in frames]))


@pytest.mark.parametrize(("degrees", "code"), [(90, cv2.ROTATE_90_CLOCKWISE), (180, cv2.ROTATE_180), (270, cv2.ROTATE_90_COUNTERCLOCKWISE)])
def test_orient_frames_turns_like_opencv(degrees: int, code: int) -> None:
    frames = np.random.default_rng(degrees).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    got = orient_frames(torch.from_numpy(frames), degrees).numpy()
    np.testing.assert_array_equal(got, np.stack([cv2.rotate(f, code) for f in frames]))
    with pytest.raises(InputError):
        orient_frames(torch.from_numpy(frames), 45)


# --- choosing -------------------------------------------------------------------------------------


def test_open_decoder_choices(clip: Path) -> None:
    with pytest.raises(InputError, match="auto, opencv, dali"):
        open_decoder(clip, kind="nvdec")
    assert open_decoder(clip, kind="auto", device="cpu").name == "opencv"  # CPU: OpenCV is exact and faster


def test_probe_video(tmp_path: Path, clip: Path) -> None:
    assert probe_video(clip) == ("mpeg4", "I420", 0)
    h264 = make_clip(tmp_path / "h.mp4", "libx264", frames=2)
    rotated = with_display_rotation(h264, tmp_path / "rot.mp4", 90)
    assert probe_video(rotated) == ("h264", "I420", 270)
    assert probe_video(make_clip(tmp_path / "444.mp4", "libx264", frames=2, pix_fmt="yuv444p"))[1] != "I420"


def test_missing_dali_names_the_extra(clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # makes `import nvidia.dali` fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'wav2lip-trt\[dali\]'"):
        open_decoder(clip, kind="dali", device="cpu")


# --- DALI on CPU (VP9/MJPEG; the same pipeline that runs NVDEC on a GPU) --------------------------


@pytest.fixture(scope="module")
def dali() -> object:
    return pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'wav2lip-trt[dali]')")


@pytest.mark.parametrize(("codec", "pix_fmt", "suffix"), [("libvpx-vp9", "yuv420p", "webm"), ("mjpeg", "yuvj420p", "avi")])
@pytest.mark.parametrize("frames", [48, 50])  # a multiple of the batch ends on a full batch
def test_dali_cpu_video_streams_close_to_opencv(dali: object, tmp_path: Path, codec: str, pix_fmt: str, suffix: str, frames: int) -> None:
    path = make_clip(tmp_path / f"clip.{suffix}", codec, frames=frames, pix_fmt=pix_fmt)
    decoder = open_decoder(path, kind="dali", device="cpu", batch=16)
    assert isinstance(decoder, DaliDecoder)
    got, sizes = decoded(decoder)
    assert sizes == [16, 16, 16] + ([2] if frames == 50 else [])
    assert_close(got, reference(path))
    for limit, want in ((16, [16]), (20, [16, 4]), (1, [1])):
        assert decoded(decoder, limit)[1] == want


def test_dali_cpu_transform_and_rotation_metadata(dali: object, tmp_path: Path) -> None:
    plain = make_clip(tmp_path / "clip.webm", "libvpx-vp9", frames=6, size=(96, 64))
    rotated = with_display_rotation(plain, tmp_path / "rotated.mkv", 90)  # OpenCV shows it turned clockwise
    transform = FrameTransform(resize_factor=2, rotate=True, crop=(1, -1, 2, 25))
    for path in (plain, rotated):
        got, _ = decoded(open_decoder(path, kind="dali", device="cpu", transform=transform, batch=4))
        assert_close(got, reference(path, transform))


def test_dali_cpu_frames_folder(dali: object, folder: Path) -> None:
    got, sizes = decoded(open_decoder(folder, kind="dali", device="cpu", batch=3))
    assert sizes == [3, 3, 1]
    want = reference(folder)
    png = [i for i in range(7) if i % 2 == 0]  # frame1, frame3, ... are PNG: lossless, so equal
    np.testing.assert_array_equal(got[png], want[png])
    assert np.abs(got.astype(np.int16) - want).max() <= 2  # JPEG: libjpeg-turbo on both sides here
    assert decoded(open_decoder(folder, kind="dali", device="cpu", batch=3), 4)[1] == [3, 1]
    image, sizes = decoded(open_decoder(folder / "frame1.png", kind="dali", device="cpu"))
    assert sizes == [1]
    np.testing.assert_array_equal(image[0], want[0])


def test_dali_cpu_refuses_what_it_cannot_decode(dali: object, tmp_path: Path, clip: Path) -> None:
    with pytest.raises(InputError, match="DALI does not decode mpeg4 on the CPU.*--decoder opencv"):
        open_decoder(clip, kind="dali", device="cpu")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, size in enumerate([(40, 30), (40, 30), (42, 30)]):
        cv2.imwrite(str(mixed / f"f{i}.png"), np.zeros((size[1], size[0], 3), np.uint8))
    with pytest.raises(InputError, match="f2.png: size differs"):
        list(open_decoder(mixed, kind="dali", device="cpu", batch=4).frames())


# --- GPU ------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("ring", [1, 2, 3])
def test_opencv_cuda_ring_equals_face_source(clip: Path, ring: int) -> None:
    transform = FrameTransform(resize_factor=2, crop=(1, -1, 0, 40))
    decoder = open_decoder(clip, kind="opencv", device="cuda", transform=transform, batch=3, ring=ring)
    assert decoder.name == "opencv"
    got, sizes = decoded(decoder)
    assert sizes == [3, 3, 3, 1]
    np.testing.assert_array_equal(got, reference(clip, transform))


@pytest.mark.gpu
@pytest.mark.parametrize("frames", [48, 50])
def test_dali_nvdec_h264_close_to_opencv(dali: object, tmp_path: Path, frames: int) -> None:
    path = make_clip(tmp_path / "clip.mp4", "libx264", frames=frames, size=(320, 240))
    decoder = open_decoder(path, kind="auto", device="cuda", batch=16)
    assert decoder.name == "dali"
    got, sizes = decoded(decoder)
    assert sizes == [16, 16, 16] + ([2] if frames == 50 else [])
    assert_close(got, reference(path))
    transform = FrameTransform(resize_factor=2, rotate=True, crop=(2, -1, 4, 100))
    got, _ = decoded(open_decoder(path, kind="dali", device="cuda", transform=transform, batch=16), 20)
    assert_close(got, reference(path, transform, limit=20))


@pytest.mark.gpu
def test_dali_nvjpeg_folder_close_to_opencv(dali: object, folder: Path) -> None:
    decoder = open_decoder(folder, kind="auto", device="cuda", batch=4)
    assert decoder.name == "dali"
    got, sizes = decoded(decoder)
    assert sizes == [4, 3]
    assert_close(got, reference(folder))


@pytest.mark.gpu
def test_auto_keeps_opencv_where_nvdec_does_not_apply(dali: object, tmp_path: Path, folder: Path) -> None:
    yuv444 = make_clip(tmp_path / "444.mp4", "libx264", frames=2, pix_fmt="yuv444p")
    assert open_decoder(yuv444, kind="auto", device="cuda").name == "opencv"
    assert open_decoder(folder / "frame1.png", kind="auto", device="cuda").name == "opencv"
