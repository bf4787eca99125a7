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
