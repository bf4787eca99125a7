"""Encoder choice: NVENC only where a trial encode proves it works, libx264 otherwise."""

from __future__ import annotations

import pytest
import torch

from wav2lip_trt import encoders
from wav2lip_trt.encoders import choose_encoder, encoder_works, ffmpeg_encoders
from wav2lip_trt.errors import InputError
from wav2lip_trt.ffmpeg import find_ffmpeg


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    return find_ffmpeg()


def test_lists_encoders(ffmpeg: str) -> None:
    names = ffmpeg_encoders(ffmpeg)
    assert "libx264" in names and "=" not in names and "aac" not in names  # video encoders only
    assert ffmpeg_encoders("/nonexistent/ffmpeg") == frozenset()


def test_trial_encode(ffmpeg: str) -> None:
    assert encoder_works(ffmpeg, "libx264")
    assert not encoder_works(ffmpeg, "no_such_encoder")
    assert not encoder_works("/nonexistent/ffmpeg", "libx264")


def test_auto_is_libx264_without_cuda(ffmpeg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoders, "_cuda_visible", lambda: False)
    assert choose_encoder("auto", ffmpeg) == "libx264"


def test_auto_matches_this_machine(ffmpeg: str) -> None:
    nvenc = torch.cuda.is_available() and "h264_nvenc" in ffmpeg_encoders(ffmpeg) and encoder_works(ffmpeg, "h264_nvenc")
    assert choose_encoder("auto", ffmpeg) == ("h264_nvenc" if nvenc else "libx264")


def test_auto_needs_a_successful_trial(ffmpeg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoders, "_cuda_visible", lambda: True)
    monkeypatch.setattr(encoders, "ffmpeg_encoders", lambda _: frozenset({"libx264", "h264_nvenc"}))
    monkeypatch.setattr(encoders, "encoder_works", lambda _, name: False)  # e.g. an H100: listed, no NVENC
    assert choose_encoder("auto", ffmpeg) == "libx264"
    monkeypatch.setattr(encoders, "encoder_works", lambda _, name: True)
    assert choose_encoder("auto", ffmpeg) == "h264_nvenc"
    monkeypatch.setattr(encoders, "ffmpeg_encoders", lambda _: frozenset({"libx264"}))
    assert choose_encoder("auto", ffmpeg) == "libx264"


def test_explicit_choices(ffmpeg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_encoder("libx264", ffmpeg) == "libx264"
    with pytest.raises(InputError, match="unknown encoder 'x265'; choose one of auto, libx264, h264_nvenc"):
        choose_encoder("x265", ffmpeg)
    monkeypatch.setattr(encoders, "encoder_works", lambda _, name: False)
    with pytest.raises(InputError, match="trial encode failed.*--encoder libx264"):
        choose_encoder("h264_nvenc", ffmpeg)
    monkeypatch.setattr(encoders, "ffmpeg_encoders", lambda _: frozenset({"mpeg4"}))
    with pytest.raises(InputError, match="has no libx264 encoder"):
        choose_encoder("libx264", ffmpeg)


def test_answers_are_cached_per_ffmpeg(ffmpeg: str) -> None:
    encoder_works(ffmpeg, "libx264")
    hits = encoder_works.cache_info().hits
    assert encoder_works(ffmpeg, "libx264")
    assert encoder_works.cache_info().hits == hits + 1


@pytest.mark.gpu
def test_nvenc_choice_encodes_on_this_gpu(ffmpeg: str, tmp_path) -> None:
    """Where auto picks NVENC, the writer really produces a video with it (H100/H200: auto is libx264)."""
    import numpy as np

    from wav2lip_trt.encode import VideoWriter

    chosen = choose_encoder("auto", ffmpeg)
    with VideoWriter(tmp_path / "out.mp4", width=320, height=240, fps=25, audio=None, encoder=chosen) as writer:
        for i in range(10):
            writer.write(np.full((240, 320, 3), i * 20, np.uint8))
    assert (tmp_path / "out.mp4").stat().st_size > 0
