"""`wav2lip-trt avatar` and `wav2lip-trt stream` as a user runs them: real processes, pipes, files and signals."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.media import probe
from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav

BOX = ["--box", "20", "90", "30", "100"]


def cli(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "wav2lip_trt", *map(str, args)], input=stdin, capture_output=True,
                          timeout=600)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, checkpoints) -> dict:
    d = tmp_path_factory.mktemp("livecli")
    pcm = float_to_int16(speechlike_audio(0.5, seed=21))
    info = {
        "dir": d, "pcm": pcm, "checkpoint": checkpoints[0], "s3fd": checkpoints[1],
        "face": write_video(d / "face.mp4", talking_face_frames(8, 128, 96, seed=2), 25.0),
        "audio": write_wav(d / "speech.wav", pcm, 16000),
    }
    proc = cli("avatar", info["face"], "--out", d / "avatar", "--checkpoint_path", checkpoints[0], "--s3fd-checkpoint",
               checkpoints[1], "--device", "cpu")
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"Wrote avatar" in proc.stderr and (d / "avatar" / "manifest.json").is_file()
    proc = cli("infer", "--face", info["face"], "--audio", info["audio"], "--outfile", d / "infer.mp4", "--checkpoint_path",
               checkpoints[0], "--s3fd-checkpoint", checkpoints[1], "--device", "cpu", "--save-frames", d / "infer_frames",
               "-q")
    assert proc.returncode == 0, proc.stderr.decode()
    info["expected"] = np.stack([cv2.imread(str(p)) for p in sorted((d / "infer_frames").glob("*.png"))])
    return info


def stream_args(setup: dict, *extra: str | Path) -> list[str | Path]:
    return ["stream", "--avatar", setup["dir"] / "avatar", "--checkpoint_path", setup["checkpoint"], "--device", "cpu",
            *extra]


@pytest.mark.parametrize("chunk_ms", ["40", "5000"])  # 5 s: one chunk larger than the audio
def test_stream_to_a_file_equals_infer(setup, tmp_path, chunk_ms) -> None:
    from wav2lip_trt.random_weights import write_random_scoring_checkpoints

    out = tmp_path / "live.mp4"
    score = ["--expert-checkpoint", write_random_scoring_checkpoints(tmp_path / "scoring")[0]] if chunk_ms == "40" else []
    proc = cli(*stream_args(setup, "--audio", setup["audio"], "--outfile", out, "--save-frames", tmp_path / "frames",
                            "--json", tmp_path / "report.json", "--chunk-ms", chunk_ms, *score))
    assert proc.returncode == 0, proc.stderr.decode()
    frames = np.stack([cv2.imread(str(p)) for p in sorted((tmp_path / "frames").glob("*.png"))])
    assert np.array_equal(frames, setup["expected"])
    facts = probe(out)
    assert facts["video"]["frames"] == len(frames) and facts["audio"]["codec"] == "aac"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["frames"] == len(frames) and report["dropped"] == 0 and report["gaps"] == 0
    assert report["latency_ms"]["chunks"] > 0 and report["latency_ms"]["p95"] >= report["latency_ms"]["p50"] > 0
    assert report["real_time_factor"] > 0 and b"Streamed" in proc.stderr
    assert ("expert" in report) == bool(score)  # --score's expert on the streamed faces (equal to infer's: test_live_stream)


def test_stdin_pcm_to_raw_stdout(setup) -> None:
    proc = cli(*stream_args(setup, "--audio", "-", "--outfile", "-", "--stdout-format", "raw", "-q"),
               stdin=setup["pcm"].tobytes())
    assert proc.returncode == 0, proc.stderr.decode()
    expected = setup["expected"]
    frames = np.frombuffer(proc.stdout, dtype=np.uint8).reshape(-1, *expected.shape[1:])
    assert np.array_equal(frames, expected)


def test_stdin_at_another_rate_is_resampled_and_muxed(setup, tmp_path) -> None:
    pcm8k = float_to_int16(speechlike_audio(0.5, rate=8000, seed=3))
    out = tmp_path / "resampled.mkv"
    proc = cli(*stream_args(setup, "--audio", "-", "--rate", "8000", "--outfile", out, "--json", tmp_path / "r.json"),
               stdin=pcm8k.tobytes())
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads((tmp_path / "r.json").read_text())
    assert abs(report["audio_seconds"] - 0.5) < 0.01 and report["frames"] == len(setup["expected"])
    assert probe(out)["audio"]["sample_rate"] > 0


@pytest.mark.parametrize("data, message", [
    (b"\x01\x02\x03", "ended inside a sample"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", "starts with a WAV header"),
    (b"", "Error: stdin: audio is empty"),
])
def test_bad_pcm_is_one_error_and_no_output(setup, tmp_path, data, message) -> None:
    proc = cli(*stream_args(setup, "--audio", "-", "--outfile", tmp_path / "x.mp4"), stdin=data)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert message in err and "Traceback" not in err and err.count("Error:") == 1
    assert list(tmp_path.iterdir()) == []


def test_damaged_avatar_and_wrong_options(setup, tmp_path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in (setup["dir"] / "avatar").iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    (broken / "frames.u8").write_bytes(b"\x00" * 16)
    proc = cli(*stream_args({**setup, "dir": tmp_path}, "--audio", setup["audio"], "--outfile", tmp_path / "x.mp4"))
    assert proc.returncode == 1 and b"Error: avatar folder not found" in proc.stderr
    proc = cli("stream", "--avatar", broken, "--checkpoint_path", setup["checkpoint"], "--audio", setup["audio"],
               "--outfile", tmp_path / "x.mp4")
    assert proc.returncode == 1 and b"Error: " in proc.stderr and b"frames.u8 is 16 bytes" in proc.stderr
    proc = cli(*stream_args(setup, "--audio", "-", "--outfile", "-", "--json", "-"), stdin=b"")
    assert proc.returncode == 1 and b"both want stdout" in proc.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_a_sender_that_stops_without_closing(setup, tmp_path) -> None:
    out = tmp_path / "idle.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "wav2lip_trt", *map(str, stream_args(
        setup, "--audio", "-", "--outfile", out, "--idle-timeout", "1", "--json", tmp_path / "idle.json"))],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(setup["pcm"].tobytes())
    proc.stdin.flush()  # and never closed
    try:
        assert proc.wait(timeout=300) == 0
    finally:
        proc.stdin.close()
    err = proc.stderr.read()
    assert b"no audio for 1 s" in err
    assert json.loads((tmp_path / "idle.json").read_text())["stopped_without_close"] is True and out.is_file()


@pytest.mark.parametrize("fmt, first", [("raw", 128 * 96 * 3), ("ts", 188)])
def test_a_reader_that_goes_away(setup, fmt, first) -> None:
    """A closed stdout (EPIPE, raw or through ffmpeg's MPEG-TS): one Error line, exit 1, no ffmpeg left."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "wav2lip_trt", *map(str, stream_args(
        setup, "--audio", setup["audio"], "--realtime", "--outfile", "-", "--stdout-format", fmt))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(first)) == first  # one frame (or one TS packet), then the reader leaves
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) == (fmt == "ts")  # the MPEG-TS encoder
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1
    assert "stdout was closed by its reader" in err and err.count("Error:") == 1 and "Traceback" not in err
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


def test_stdin_pcm_to_mpegts_on_stdout(setup, tmp_path) -> None:
    proc = cli(*stream_args(setup, "--audio", "-", "--outfile", "-", "-q"), stdin=setup["pcm"].tobytes())
    assert proc.returncode == 0, proc.stderr.decode()
    (tmp_path / "live.ts").write_bytes(proc.stdout)
    facts = probe(tmp_path / "live.ts")
    assert facts["format"] == "mpegts" and facts["video"]["codec"] == "h264"
    assert facts["video"]["frames"] == len(setup["expected"]) and (facts["video"]["width"], facts["video"]["height"]) == (128, 96)


def test_wall_clock_keeps_the_avatar_moving_while_the_sender_is_silent(setup, tmp_path) -> None:
    """stdin stays open and sends nothing: on the wall clock frames keep coming (silence, reported as one gap
    with its length) until --idle-timeout ends the stream as if it were closed; the progress line shows the latency."""
    report_path = tmp_path / "wall.json"
    proc = subprocess.Popen([sys.executable, "-m", "wav2lip_trt", *map(str, stream_args(
        setup, "--audio", "-", "--outfile", "-", "--stdout-format", "raw", "--clock", "wall", "--delay", "0.5",
        "--idle-timeout", "3", "--json", report_path))], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    proc.stdin.write(setup["pcm"].tobytes())
    proc.stdin.flush()  # and never closed
    try:
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    finally:
        proc.stdin.close()
    reader.join(timeout=60)
    err = proc.stderr.read().decode()
    report = json.loads(report_path.read_text())
    frames = len(out[0]) // (128 * 96 * 3)
    assert report["stopped_without_close"] is True and report["gaps"] == len(report["gap_list"]) >= 1
    assert report["gap_list"][-1][0] >= 0.45 and report["gap_list"][-1][1] >= 1.5  # the pause after the speech
    assert frames == report["frames"] >= len(setup["expected"]) + 35  # 13 frames of speech, then silence
    assert "no audio for 3 s" in err and re.search(r"(?m)^stream: .*latency p50 [0-9.]+ ms, p95 [0-9.]+ ms", err)


def test_an_avatar_of_another_checkpoint_is_one_error(setup, tmp_path) -> None:
    from wav2lip_trt.random_weights import write_random_checkpoints

    other, _ = write_random_checkpoints(tmp_path / "other", seed=1)
    proc = cli("stream", "--avatar", setup["dir"] / "avatar", "--checkpoint_path", other, "--audio", setup["audio"],
               "--outfile", tmp_path / "x.mp4")
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "was prepared with checkpoint wav2lip.pth" in err
    assert err.count("Error:") == 1 and "Traceback" not in err and not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_sigterm_leaves_no_file_and_nothing_running(setup, tmp_path, signame) -> None:
    sig = getattr(signal, signame)
    out = tmp_path / "term.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "wav2lip_trt", *map(str, stream_args(
        setup, "--audio", setup["audio"], "--realtime", "--outfile", out))], stderr=subprocess.PIPE)
    assert proc.stderr is not None
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".") for p in tmp_path.iterdir()):
        time.sleep(0.05)  # ffmpeg's temporary file: the stream is running
    assert proc.poll() is None
    proc.send_signal(sig)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 128 + sig, err
    assert f"Interrupted ({signame})" in err and list(tmp_path.iterdir()) == []
    assert subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True).stdout == b""  # no ffmpeg left


def test_pcm_formats_channels_and_bad_settings() -> None:
    """stdin's PCM as the stream reads it: f32le as is, s16le as x / 32768, channels averaged; bad settings refused."""
    import io

    from wav2lip_trt.errors import InputError
    from wav2lip_trt.live.sources import PcmReader

    wav = speechlike_audio(0.1, seed=5).astype(np.float32)
    as_f32 = np.concatenate(list(PcmReader(io.BytesIO(wav.astype("<f4").tobytes()), sample_format="f32le")))
    assert np.array_equal(as_f32, wav)
    pcm = float_to_int16(wav)
    stereo = np.stack([pcm, np.zeros_like(pcm)], axis=1).astype("<i2")
    as_s16 = np.concatenate(list(PcmReader(io.BytesIO(stereo.tobytes()), channels=2)))
    assert np.array_equal(as_s16, (pcm.astype(np.float32) / 32768 + 0) / 2)
    for kwargs, message in (({"rate": 0}, "--rate"), ({"sample_format": "s24le"}, "--format"), ({"channels": 0}, "--channels")):
        with pytest.raises(InputError, match=message):
            PcmReader(io.BytesIO(b""), **kwargs)


@pytest.mark.parametrize("fmt", ["raw", "ts"])
def test_an_interrupt_leaves_stdout_on_a_frame_boundary(setup, fmt) -> None:
    """SIGTERM while the reader is slow: raw output ends with a whole frame (the signal waits for the write in
    progress; a buffered write cut by the signal left part of a frame), MPEG-TS with whole packets."""
    import fcntl
    import termios

    import psutil

    pace = ["--realtime"] if fmt == "ts" else []  # the whole clip's MPEG-TS is one ffmpeg write: stop it before
    proc = subprocess.Popen([sys.executable, "-m", "wav2lip_trt", *map(str, stream_args(
        setup, "--audio", setup["audio"], "--outfile", "-", "--stdout-format", fmt, "-q", *pace))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None

    def running() -> bool:  # raw: the pipe (64 KiB) is full, the second frame's write blocked in its middle
        if fmt == "ts":  # ts: the encoder has started
            return bool(psutil.Process(proc.pid).children())
        waiting = fcntl.ioctl(proc.stdout.fileno(), termios.FIONREAD, b"\0" * 4)  # bytes not read yet
        return int.from_bytes(waiting, sys.byteorder) >= 64 * 1024

    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not running():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the handler has run, inside the write (raw), and the reader has not read yet
    out = proc.stdout.read()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, err
    assert "Interrupted (SIGTERM)" in err and "Traceback" not in err
    if fmt == "raw":
        assert len(out) >= 128 * 96 * 3 and len(out) % (128 * 96 * 3) == 0
    else:
        assert out[:1] in (b"", b"\x47") and len(out) % 188 == 0  # whole TS packets, if any were flushed
