"""BGR -> yuv420p on the device equals the real ffmpeg's swscale conversion (the writer's flags) within one level."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from wav2lip_trt.encode import conversion_args, yuv420_frame_bytes
from wav2lip_trt.ffmpeg import find_ffmpeg
from wav2lip_trt.kernels.yuv import CHROMA_TAPS, bgr_to_yuv420
from wav2lip_trt.samples import talking_face_frames


def ffmpeg_yuv420(frames: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) BGR through ffmpeg exactly as the writer converts them, read back as yuv420p rawvideo."""
    count, height, width, _ = frames.shape
    cmd = [find_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error",
           "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-i", "pipe:0",
           *conversion_args(width, height), "-f", "rawvideo", "pipe:1"]
    out = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(count, yuv420_frame_bytes(width, height))


def frames_for(width: int, height: int, seed: int) -> np.ndarray:
    """Noise (every level, sharp edges), a smooth ramp, and a synthetic talking face."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 255 // (width + height)], -1).astype(np.uint8)
    face = next(iter(talking_face_frames(1, width, height)))
    return np.concatenate([noise, ramp[None], face[None]])


@pytest.mark.parametrize(("width", "height"), [(96, 64), (160, 90), (63, 47), (64, 47), (63, 48), (480, 270)])
def test_equals_ffmpeg_accurate_rnd_within_one_level(width: int, height: int) -> None:
    frames = frames_for(width, height, seed=width * height)
    expected = ffmpeg_yuv420(frames)
    got = bgr_to_yuv420(torch.from_numpy(frames)).numpy()
    assert got.shape == expected.shape
    diff = np.abs(got.astype(np.int16) - expected)
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.03  # only values within rounding distance of a half level differ


def test_chroma_filter_is_swscale_bicubic_downscale() -> None:
    # B = 0, C = 0.6 at distances 0.25, 0.75, 1.25, 1.75 (half-pel centre, factor two), normalised
    half = (-0.0140625, -0.0421875, 0.1203125, 0.4359375)
    assert CHROMA_TAPS == pytest.approx(half + half[::-1])
    assert sum(CHROMA_TAPS) == pytest.approx(1.0)


def test_layout_is_planar_and_solid_colours_are_exact() -> None:
    frames = np.zeros((2, 4, 6, 3), np.uint8)
    frames[1] = (255, 255, 255)  # white
    got = bgr_to_yuv420(torch.from_numpy(frames)).numpy()
    assert got.shape == (2, 36)
    assert (got[0, :24] == 16).all() and (got[0, 24:] == 128).all()  # black: Y 16, U = V = 128
    assert (got[1, :24] == 235).all() and (got[1, 24:] == 128).all()  # white: Y 235


def test_rejects_what_is_not_a_bgr_batch() -> None:
    with pytest.raises(ValueError, match="uint8"):
        bgr_to_yuv420(torch.zeros((1, 4, 4, 3), dtype=torch.float32))
    with pytest.raises(ValueError, match="B, H, W, 3"):
        bgr_to_yuv420(torch.zeros((4, 4, 3), dtype=torch.uint8))


@pytest.mark.gpu
def test_cuda_equals_the_cpu() -> None:
    frames = torch.from_numpy(frames_for(1920, 1080, seed=3))
    cpu = bgr_to_yuv420(frames)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        cuda = bgr_to_yuv420(frames.cuda(non_blocking=False))
    stream.synchronize()
    diff = (cuda.cpu().to(torch.int16) - cpu.to(torch.int16)).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-3  # FMA contraction may move a tie
