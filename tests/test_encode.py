from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wav2lip_trt.encode import VideoWriter, frame_rate_arg
from wav2lip_trt.errors import FFmpegError
from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_wav

from media import decode_frames, probe


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    return write_wav(tmp_path_factory.mktemp("audio") / "a.wav", float_to_int16(speechlike_audio(1.0)), 16000)


def test_frame_rate_is_exact_rational() -> None:
    assert frame_rate_arg(25.0) == "25/1"
    assert frame_rate_arg(30000 / 1001) == "30000/1001"
    assert frame_rate_arg(12.5) == "25/2"


@pytest.mark.parametrize("fps", [25.0, 30000 / 1001])
def test_writes_h264_with_audio_atomically(tmp_path: Path, wav: Path, fps: float) -> None:
    out = tmp_path / "out.mp4"
    frames = list(talking_face_frames(int(round(fps)), 64, 48))
    with VideoWriter(out, width=64, height=48, fps=fps, audio=wav) as writer:
        for frame in frames:
            writer.write(frame)
        assert not out.exists()
    info = probe(out)
    assert info["video"]["codec"] == "h264" and info["video"]["frames"] == len(frames)
    assert info["video"]["fps"] == pytest.approx(fps, abs=1e-6)
    assert info["audio"]["codec"] == "aac" and info["audio"]["sample_rate"] == 16000
    assert info["audio"]["duration"] == pytest.approx(1.0, abs=0.05)
    assert list(tmp_path.iterdir()) == [out]
    decoded = decode_frames(out)
    diff = decoded.astype(int) - np.stack(frames)
    assert np.abs(diff).mean() < 3 and abs(diff.mean()) < 1.5  # default swscale flags gave a -3 shift; the rest is the reader


def test_odd_size_is_padded_to_even(tmp_path: Path, wav: Path) -> None:
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, width=63, height=47, fps=25.0, audio=wav) as writer:
        for frame in talking_face_frames(5, 63, 47):
            writer.write(frame)
    assert (probe(out)["video"]["width"], probe(out)["video"]["height"]) == (64, 48)


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    bad_audio = tmp_path / "bad.wav"
    bad_audio.write_bytes(b"RIFF nonsense")
    with pytest.raises(FFmpegError, match="out.mp4"):
        with VideoWriter(out, width=64, height=48, fps=25.0, audio=bad_audio) as writer:
            for frame in talking_face_frames(50, 64, 48):
                writer.write(frame)
    assert list(tmp_path.iterdir()) == [bad_audio]


def test_exception_inside_aborts(tmp_path: Path, wav: Path) -> None:
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(out, width=64, height=48, fps=25.0, audio=wav) as writer:
            writer.write(next(talking_face_frames(1, 64, 48)))
            raise RuntimeError("stage failed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_while_ffmpeg_starts_leaves_nothing(tmp_path: Path, wav: Path, monkeypatch, signame) -> None:
    """A signal that lands inside ``subprocess.Popen`` (ffmpeg forked, the Popen object not yet
    returned) is raised once ffmpeg and its temporary file both exist, so both are cleaned up."""
    import os
    import signal
    import subprocess

    import psutil

    from wav2lip_trt import encode
    from wav2lip_trt.cli_errors import Interrupted, install_signal_handlers

    started = []

    class SignalledPopen(subprocess.Popen):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            started.append(self.pid)
            os.kill(os.getpid(), getattr(signal, signame))  # arrives before Popen returns to the writer
            for _ in range(1000):  # give the interpreter every chance to run the handler here
                pass

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    writer = VideoWriter(tmp_path / "out.mp4", width=64, height=48, fps=25.0, audio=wav)
    monkeypatch.setattr(encode.subprocess, "Popen", SignalledPopen)  # the encoder's start only
    try:
        install_signal_handlers()
        with pytest.raises(Interrupted) as info:
            with writer:
                raise AssertionError("the interrupt must come before the first frame")
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert info.value.signum == getattr(signal, signame)
    assert len(started) == 1 and not psutil.pid_exists(started[0])  # ffmpeg killed and reaped
    assert list(tmp_path.iterdir()) == []  # no temporary file, no output


def _x264_option(path: Path, name: str) -> str:
    """One option of the x264 settings string that libx264 writes into the stream (its SEI)."""
    data = path.read_bytes()
    start = data.index(b"x264 - core")
    settings = data[start : data.index(b"\x00", start)].decode(errors="replace")
    return next(part.split("=", 1)[1] for part in settings.split() if part.startswith(name + "="))


@pytest.mark.parametrize(("preset", "subme"), [("medium", "7"), ("veryfast", "2"), ("ultrafast", "0")])
def test_preset_reaches_libx264(tmp_path: Path, preset: str, subme: str) -> None:
    out = tmp_path / f"{preset}.mp4"
    with VideoWriter(out, width=64, height=48, fps=25.0, audio=None, preset=preset) as writer:
        for frame in talking_face_frames(3, 64, 48):
            writer.write(frame)
    assert _x264_option(out, "subme") == subme  # each preset's subpixel refinement level


def test_unknown_preset_is_refused_before_ffmpeg_starts(tmp_path: Path) -> None:
    from wav2lip_trt.errors import InputError

    with pytest.raises(InputError, match="'fastest' is not a libx264 preset; choose one of ultrafast"):
        VideoWriter(tmp_path / "out.mp4", width=64, height=48, fps=25.0, audio=None, preset="fastest")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("width", "height"), [(64, 48), (63, 47)])
def test_yuv420p_input_encodes_what_ffmpeg_would_have_converted(tmp_path: Path, wav: Path, width: int, height: int) -> None:
    """The GPU path's frames (converted on the device) give the video the BGR frames give (within the
    conversion's one level), with no swscale pass in ffmpeg; odd sizes arrive padded, as ffmpeg pads them."""
    import torch

    from wav2lip_trt.kernels.yuv import bgr_to_yuv420

    frames = np.stack(list(talking_face_frames(10, width, height)))
    outs = {}
    for fmt in ("bgr24", "yuv420p"):
        outs[fmt] = tmp_path / f"{fmt}.mp4"
        with VideoWriter(outs[fmt], width=width, height=height, fps=25.0, audio=wav, pixel_format=fmt, crf=0) as writer:
            if fmt == "yuv420p":
                assert "-sws_flags" not in writer.command(outs[fmt])
            for frame in (frames if fmt == "bgr24" else bgr_to_yuv420(torch.from_numpy(frames)).numpy()):
                writer.write(frame)
    bgr, yuv = decode_frames(outs["bgr24"]), decode_frames(outs["yuv420p"])
    assert bgr.shape == yuv.shape == (10, height + height % 2, width + width % 2, 3)
    diff = np.abs(bgr.astype(int) - yuv)
    assert diff.mean() < 0.1 and diff.max() <= 4  # crf 0: lossless; one level in Y/U/V is a few in BGR
    assert probe(outs["yuv420p"])["audio"]["codec"] == "aac"


def test_yuv420p_writer_refuses_a_bgr_frame(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\(4608,\) uint8"):
        with VideoWriter(tmp_path / "out.mp4", width=64, height=48, fps=25.0, audio=None, pixel_format="yuv420p") as writer:
            writer.write(np.zeros((48, 64, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_preset_is_a_batch_job_field_checked_before_any_work(tmp_path: Path, checkpoints, talking_clip) -> None:
    import json

    from wav2lip_trt.errors import InputError
    from wav2lip_trt.jobs.spec import per_call_options, read_jobs

    assert "preset" in per_call_options()
    face, audio = talking_clip
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"face": str(face), "audio": str(audio), "outfile": str(tmp_path / f"{p}.mp4"),
                                        "preset": p}) + "\n" for p in ("veryfast", "fastest")))
    good, bad = (job.inference_options({"checkpoint_path": checkpoints[0], "s3fd_checkpoint": checkpoints[1],
                                        "device": "cpu"}) for job in read_jobs(jobs))
    good.validate()
    assert good.preset == "veryfast"
    with pytest.raises(InputError, match="--preset 'fastest' is not a libx264 preset; choose one of ultrafast"):
        bad.validate()
