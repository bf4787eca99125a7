"""Progress as a user sees it: bars on a terminal, whole lines in a log, and counts that move.

A log (stderr sent to a file or a pipe, as CI and scripts do) must read line by line: no carriage
return, each step's start and end with its count, and every message, ``Error: ...`` above all, on a
line of its own, so ``grep '^Error:' log`` finds it. Detection counts frames against a total, and the
lip-sync count moves per generator call (a CPU chunk of 8 faces), not per batch.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from itertools import accumulate
from pathlib import Path

import numpy as np
import pytest

from wav2lip_trt import progress as progress_module
from wav2lip_trt.audio import MelChunks, load_audio, melspectrogram
from wav2lip_trt.checkpoints import load_s3fd, load_wav2lip
from wav2lip_trt.detect import FaceDetector
from wav2lip_trt.detection.stage import DetectionPass
from wav2lip_trt.execution.budget import CPU_GENERATOR_CHUNK, chunk_sizes
from wav2lip_trt.frame_ops import HostOps
from wav2lip_trt.options import InferenceOptions
from wav2lip_trt.pipeline import face_items, generate
from wav2lip_trt.progress import Progress
from wav2lip_trt.runners.base import S3FD_INPUTS, S3FD_OUTPUTS, WAV2LIP_INPUTS, WAV2LIP_OUTPUTS
from wav2lip_trt.runners.torch_runner import TorchRunner
from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav
from wav2lip_trt.stages import StageTimes
from wav2lip_trt.video import FaceSource

BOX = ("--box", "10", "80", "20", "100")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("progress")
    frames = list(talking_face_frames(20, 128, 96, seed=3))
    text = d / "text.wav"
    text.write_text("this is text, not a WAV file\n")
    return {
        "dir": d, "text": text,
        "video": write_video(d / "face.mp4", frames, 25.0),
        "wav": write_wav(d / "speech.wav", float_to_int16(speechlike_audio(0.8, seed=4)), 16000),
        "short": write_wav(d / "short.wav", float_to_int16(speechlike_audio(0.6, seed=5)), 16000),
        "empty": write_wav(d / "empty.wav", np.zeros(0, dtype=np.int16), 16000),
    }


def run_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real command with stdout and stderr on pipes (not a terminal: --progress auto draws lines).

    Decoded without newline translation (``text=True`` would turn every carriage return into a newline).
    """
    proc = subprocess.run([sys.executable, "-m", "wav2lip_trt", *map(str, args)], capture_output=True, timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def infer_args(media: dict[str, Path], checkpoints: tuple[Path, Path], out: Path, audio: str = "short") -> list:
    return ["infer", "--checkpoint_path", checkpoints[0], "--s3fd-checkpoint", checkpoints[1], "--face", media["video"],
            "--audio", media[audio], "--outfile", out, "--device", "cpu"]


# --- the display ----------------------------------------------------------------------------------------


def test_lines_mode_writes_whole_lines_with_counts_and_an_eta(capsys, monkeypatch) -> None:
    monkeypatch.setattr(progress_module, "LINE_SECONDS", 0.0)  # a count line at every update
    with Progress("lip-sync", unit="frame", mode="off") as progress:
        progress.phase("loading models")
        progress.phase("detecting faces")
        progress.start(40)
        progress.update(16)
        progress.update(8)  # a smaller running count is ignored
        progress.update(40)
        progress.phase("lip-syncing")
        progress.start(72)
        progress.update(14)
        progress.update(72)
    err = capsys.readouterr().err
    assert "\r" not in err and err.endswith("\n")
    lines = err.splitlines()
    assert lines[0] == "loading models..."
    assert re.fullmatch(r"loading models: \d+\.\d s", lines[1]), lines
    assert lines[2] == "detecting faces..."
    assert re.fullmatch(r"detecting faces: 16/40 frames, \d+\.\d frames/s, about \d+:\d\d left", lines[3]), lines
    assert re.fullmatch(r"detecting faces: 40/40 frames in \d+\.\d s", lines[4]), lines
    assert lines[5] == "lip-syncing..."
    assert re.fullmatch(r"lip-syncing: 14/72 frames, .* left", lines[6]), lines
    assert re.fullmatch(r"lip-syncing: 72/72 frames in \d+\.\d s", lines[7]), lines
    assert len(lines) == 8, lines


def test_lines_mode_counts_only_every_line_seconds(capsys) -> None:
    with Progress("lip-sync", unit="frame", mode="off") as progress:
        progress.phase("lip-syncing")
        progress.start(300)
        for done in range(1, 301):
            progress.update(done)
    lines = capsys.readouterr().err.splitlines()  # a fast step: no count line before its end
    assert lines[0] == "lip-syncing..." and re.fullmatch(r"lip-syncing: 300/300 frames in \d+\.\d s", lines[1])
    assert len(lines) == 2, lines


def test_lines_mode_relabel_keeps_the_count_and_a_failure_prints_no_end(capsys) -> None:
    with pytest.raises(RuntimeError):
        with Progress("reading jobs", unit="job", mode="off") as progress:
            progress.start(3)
            progress.update(1)
            progress.relabel("lip-syncing (2 workers ready)")
            raise RuntimeError("boom")
    assert capsys.readouterr().err.splitlines() == ["reading jobs...", "lip-syncing (2 workers ready) (1/3 jobs)"]


def test_bars_mode_shows_phases_then_frames_with_a_late_eta(capsys) -> None:
    with Progress("lip-sync", unit="frame", mode="on") as progress:
        progress.phase("loading models")
        progress.phase("lip-syncing")
        progress.start(297)
        time.sleep(0.2)  # past tqdm's minimum redraw interval, so the first frame is drawn
        progress.update(1)
        early = capsys.readouterr().err
        for done in range(2, 298):
            progress.update(done)
    late = capsys.readouterr().err
    assert "\r" in early and "loading models..." in early
    first = [s for s in re.split(r"[\r\n]", early) if "1/297" in s]
    assert first and all("<" not in s and "frame/s" not in s for s in first), first  # no ETA from one frame
    final = [s for s in re.split(r"[\r\n]", late) if "297/297" in s][-1]
    assert final.startswith("lip-syncing: 100%") and "<00:00" in final and "frame/s" in final, final


def test_a_failed_bar_in_a_file_leaves_the_next_line_its_own(capsys) -> None:
    with pytest.raises(RuntimeError):
        with Progress("lip-sync", unit="frame", mode="on") as progress:
            progress.phase("reading audio")
            raise RuntimeError("boom")
    sys.stderr.write("Error: boom\n")
    assert capsys.readouterr().err.split("\n")[-2] == "Error: boom"


def test_auto_follows_the_terminal(monkeypatch) -> None:
    monkeypatch.setattr(progress_module, "_is_terminal", lambda: True)
    assert Progress("x", mode="auto").bars and not Progress("x", mode="off").bars
    monkeypatch.setattr(progress_module, "_is_terminal", lambda: False)
    assert not Progress("x", mode="auto").bars and Progress("x", mode="on").bars
    with pytest.raises(ValueError):
        progress_module.set_mode("sometimes")


def test_disabled_is_silent(capsys) -> None:
    for mode in ("on", "off"):
        with Progress("lip-sync", unit="frame", enabled=False, mode=mode) as progress:
            progress.phase("loading models")
            progress.start(10)
            for done in range(1, 11):
                progress.update(done)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


# --- what the pipeline reports ---------------------------------------------------------------------------


def test_detection_counts_frames_against_a_total(media, checkpoints) -> None:
    detector = FaceDetector(TorchRunner(load_s3fd(checkpoints[1]), S3FD_INPUTS, S3FD_OUTPUTS))
    source = FaceSource(media["video"])
    ops = HostOps(None, source=source)  # type: ignore[arg-type]  (detection only)
    for every, batch, expected in ((1, 8, [8, 16, 20]), (3, 4, [10, 20])):
        starts, done = [], []
        options = InferenceOptions(checkpoint_path=checkpoints[0], s3fd_checkpoint=checkpoints[1], face=media["video"],
                                   audio=media["wav"], face_det_batch_size=batch, detect_every=every)
        DetectionPass(detector, ops, options, source, StageTimes(), runner_label="torch/fp32", on_start=starts.append,
                      on_frame=done.append).run(40)
        assert starts == [20]  # the run wants 40 frames, the video has 20
        assert sorted(set(done)) == expected and done == sorted(done), done


def test_lip_sync_counts_each_cpu_chunk_and_the_frames_stay_the_same(media, checkpoints) -> None:
    options = InferenceOptions(checkpoint_path=checkpoints[0], face=media["video"], audio=media["wav"], box=(10, 80, 20, 100))
    source = FaceSource(media["video"])
    chunks = MelChunks(melspectrogram(load_audio(media["wav"])), 25.0)
    runner = TorchRunner(load_wav2lip(checkpoints[0]), WAV2LIP_INPUTS, WAV2LIP_OUTPUTS)
    total = len(chunks)  # 17 output frames: one generator batch of 40
    chunked = list(accumulate(chunk_sizes(total, CPU_GENERATOR_CHUNK)))
    assert len(chunked) >= 2

    def frames(on_frame):
        ops = HostOps(chunks, source=source)
        items = face_items(source, total, options, None, ops)
        return [frame for batch in generate(items, ops, runner, 40, None, total=total, on_frame=on_frame)
                for frame in batch.host_frames()]

    done: list[int] = []
    counted = frames(done.append)
    assert done == [*chunked, total]  # [6, 12, 17, 17]: the batch's faces run as chunks of 6, 6 and 5
    plain = frames(None)
    assert len(counted) == len(plain) == total
    for a, b in zip(counted, plain):
        np.testing.assert_array_equal(a, b)


# --- the real command, as a script runs it -----------------------------------------------------------------


def test_a_log_has_plain_lines_with_counts_and_json_stays_on_stdout(media, checkpoints, tmp_path) -> None:
    import json

    proc = run_cli(*infer_args(media, checkpoints, tmp_path / "out.mp4"), "--json", "-")
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert "detecting faces..." in lines and "lip-syncing..." in lines
    assert any(re.fullmatch(r"detecting faces: 12/12 frames in \d+\.\d s", line) for line in lines), lines
    assert any(re.fullmatch(r"lip-syncing: 12/12 frames in \d+\.\d s", line) for line in lines), lines
    assert lines[-1].startswith(f"Wrote {tmp_path / 'out.mp4'}: 12 frames")
    assert json.loads(proc.stdout)["frames"] == 12


def test_detect_counts_frames_in_a_log(media, checkpoints) -> None:
    proc = run_cli("detect", "--face", media["video"], "--s3fd-checkpoint", checkpoints[1], "--device", "cpu",
                   "--no-cache", "--face_det_batch_size", "8")
    assert proc.returncode == 0 and "\r" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[:2] == ["loading models...", lines[1]] and lines[2] == "detecting faces...", lines
    assert any(re.fullmatch(r"detecting faces: 20/20 frames in \d+\.\d s", line) for line in lines), lines


def test_progress_on_draws_bars_even_into_a_pipe(media, checkpoints, tmp_path) -> None:
    proc = run_cli(*infer_args(media, checkpoints, tmp_path / "out.mp4"), *BOX, "--progress", "on")
    assert proc.returncode == 0, proc.stderr
    assert "\r" in proc.stderr and "12/12" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("Wrote ")


@pytest.mark.parametrize("case", ["empty audio", "text as WAV", "bogus --ffmpeg", "bogus --ffmpeg, bars",
                                  "truncated checkpoint"])
def test_a_failing_command_logs_exactly_one_error_line(media, checkpoints, tmp_path, case) -> None:
    """Issue 17, item 14: the Error line was glued to the phase label (``reading audio... 00:00  Error: ...``)."""
    audio = {"empty audio": "empty", "text as WAV": "text"}.get(case, "short")
    extra = {"bogus --ffmpeg": ["--ffmpeg", tmp_path / "no-ffmpeg"],
             "bogus --ffmpeg, bars": ["--ffmpeg", tmp_path / "no-ffmpeg", "--progress", "on"]}.get(case, [])
    args = infer_args(media, checkpoints, tmp_path / "out.mp4", audio)
    if case == "truncated checkpoint":  # fails while models load, after two steps have been shown
        truncated = media["dir"] / "truncated.pth"
        truncated.write_bytes(checkpoints[0].read_bytes()[:5000])
        args[2] = truncated
    proc = run_cli(*args, *BOX, *extra)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.split("\n") if line.startswith("Error:")]  # grep '^Error:'
    assert len(errors) == 1 and proc.stderr.count("Error:") == 1, proc.stderr
    assert proc.stderr.rstrip("\n").split("\n")[-1] == errors[0]
    if "bars" not in case:
        assert "\r" not in proc.stderr
    assert sorted(os.listdir(tmp_path)) == []


def test_sigint_after_the_first_of_three_audios_names_what_was_kept(media, checkpoints, tmp_path) -> None:
    audios = [write_wav(tmp_path / "a.wav", float_to_int16(speechlike_audio(0.4, seed=1)), 16000)]
    audios += [write_wav(tmp_path / f"{name}.wav", float_to_int16(speechlike_audio(6.0, seed=2)), 16000)
               for name in ("b", "c")]
    out = tmp_path / "out"
    args = ["infer", "--checkpoint_path", checkpoints[0], "--face", media["video"], *BOX, "--outfile", out,
            "--device", "cpu", *[a for audio in audios for a in ("--audio", audio)]]
    proc = subprocess.Popen([sys.executable, "-m", "wav2lip_trt", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # whole lines as they come: wait for the first output, and b to be under way
            seen.append(line)
            if line.startswith("b.wav: lip-syncing..."):
                break
        else:
            pytest.fail("".join(seen))
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        stdout, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    stderr = "".join(seen) + rest
    assert proc.returncode == 130, stderr
    assert f"Wrote {out / 'a.mp4'}" in stderr
    assert stderr.splitlines()[-1] == (f"Interrupted (SIGINT); kept 1 of 3 outputs: {out / 'a.mp4'}; not written: "
                                       f"{out / 'b.mp4'}, {out / 'c.mp4'}."), stderr
    assert sorted(os.listdir(out)) == ["a.mp4"]
