"""Bad input, as a user gives it: one ``Error:`` line naming the file and the problem, exit 1, nothing left.

Every case runs the real command (``python -m wav2lip_trt``) on generated media and random-weight
checkpoints. "Up front" is shown by giving a corrupt Wav2Lip checkpoint as well: a check that runs
before any model loads reports its own problem, not the checkpoint's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from wav2lip_trt.encode import CONTAINERS, VideoWriter
from wav2lip_trt.files import atomic_write_text, check_output_file, temporary_sibling
from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav

from media import make_video

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_REASON = "runs as root, where a read-only folder is still writable"


def run_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real command, its output decoded as written (``text=True`` would turn a carriage return into a newline)."""
    proc = subprocess.run([sys.executable, "-m", "wav2lip_trt", *map(str, args)], capture_output=True, timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.fixture(scope="module")
def media(tmp_path_factory, checkpoints) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad_inputs")
    frames = list(talking_face_frames(20, 128, 96, seed=2))
    image = d / "face.jpg"
    cv2.imwrite(str(image), frames[0])
    tiny = d / "tiny.png"
    cv2.imwrite(str(tiny), cv2.resize(frames[0], (31, 40)))
    smallest = d / "smallest.png"
    cv2.imwrite(str(smallest), cv2.resize(frames[0], (32, 32)))
    corrupt = d / "corrupt.pth"
    corrupt.write_bytes(checkpoints[0].read_bytes()[:5000])
    return {
        "dir": d, "image": image, "tiny": tiny, "smallest": smallest,
        "video": write_video(d / "face.mp4", frames, 25.0),
        "wav": write_wav(d / "speech.wav", float_to_int16(speechlike_audio(1.0, seed=4)), 16000),
        "long_wav": write_wav(d / "long.wav", float_to_int16(speechlike_audio(20.0, seed=5)), 16000),
        "fast_video": make_video(d / "fast.mp4", seconds=0.01, fps=5000),
        "wav2lip": checkpoints[0], "s3fd": checkpoints[1], "corrupt": corrupt,
    }


def infer_args(media: dict[str, Path], out: Path, *, face: str = "image", checkpoint: str = "wav2lip") -> list:
    return ["infer", "--checkpoint_path", media[checkpoint], "--s3fd-checkpoint", media["s3fd"], "--face", media[face],
            "--audio", media["wav"], "--outfile", out, "--device", "cpu"]


def assert_one_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 1, no traceback, and (with --quiet) exactly one line on stderr: ``Error: ...``."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "\r" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().split("\n")  # whole lines, as grep '^Error:' reads a log
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- 1. build-engines: --out and --json ---------------------------------------------------------------


def test_build_engines_out_and_json_that_cannot_be_written(media, tmp_path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    base = ["build-engines", "--s3fd-checkpoint", media["s3fd"], "--onnx-only", "-q"]
    cases = [
        (["--out", blocker / "engines"], ["--out", "a_file", "not a folder"]),
        (["--out", blocker], ["--out", "a_file"]),
        (["--out", media["s3fd"]], ["--out", "inputs are never overwritten"]),
        (["--out", tmp_path / "e", "--json", tmp_path], ["--json", "is a folder"]),
        (["--out", tmp_path / "e", "--json", blocker / "r.json"], ["--json", "a_file", "not a folder"]),
        (["--out", tmp_path / "e", "--json", media["s3fd"]], ["--json", "s3fd.pth", "inputs are never overwritten"]),
        (["--out", tmp_path / "e", "--json", tmp_path / "e"], ["--json", "--out"]),
    ]
    for extra, fragments in cases:
        assert_one_error(run_cli(*base, *extra), *fragments)
        assert listing(tmp_path) == ["a_file"], extra  # refused before anything was exported


@pytest.mark.skipif(ROOT, reason=ROOT_REASON)
def test_build_engines_into_a_read_only_folder(media, tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for extra in (["--out", locked], ["--out", locked / "engines"], ["--out", tmp_path / "e", "--json", locked / "r.json"]):
            proc = run_cli("build-engines", "--s3fd-checkpoint", media["s3fd"], "--onnx-only", "-q", *extra)
            assert_one_error(proc, "locked", "permission denied")
        assert listing(locked) == []
    finally:
        locked.chmod(0o755)


def test_build_engines_json_into_a_missing_folder_is_created(media, tmp_path) -> None:
    report = tmp_path / "reports" / "today" / "build.json"
    proc = run_cli("build-engines", "--s3fd-checkpoint", media["s3fd"], "--onnx-only", "-q",
                   "--out", tmp_path / "engines", "--json", report)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""
    data = json.loads(report.read_text())
    assert [r["model"] for r in data["results"]] == ["s3fd"]
    assert listing(report.parent) == ["build.json"]  # written whole: no temporary name left


# --- 2, 3. infer: --json, --save-frames, --dump-intermediates ------------------------------------------


def test_infer_outputs_that_cannot_be_written_are_refused_up_front(media, tmp_path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = tmp_path / "out.mp4"
    cases = [
        (["--json", tmp_path], ["--json", "is a folder"]),
        (["--json", blocker / "run.json"], ["--json", "a_file", "not a folder"]),
        (["--json", media["wav"]], ["--json", "speech.wav", "inputs are never overwritten"]),
        (["--json", out], ["--json", "--outfile"]),
        (["--save-frames", blocker], ["--save-frames", "a_file", "is a file"]),
        (["--save-frames", blocker / "frames"], ["--save-frames", "not a folder"]),
        (["--save-frames", out], ["--save-frames", "--outfile"]),
        (["--dump-intermediates", blocker], ["--dump-intermediates", "a_file", "is a file"]),
        (["--dump-intermediates", blocker / "dump"], ["--dump-intermediates", "not a folder"]),
        (["--outfile", tmp_path], ["--outfile", "is a folder"]),
    ]
    for extra, fragments in cases:
        # the corrupt checkpoint would fail at model load: the output check must come first
        proc = run_cli(*infer_args(media, out, checkpoint="corrupt"), "-q", *extra)
        assert_one_error(proc, *fragments)
        assert listing(tmp_path) == ["a_file"], extra


@pytest.mark.skipif(ROOT, reason=ROOT_REASON)
def test_infer_outputs_in_a_read_only_folder(media, tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for extra in (["--json", locked / "r.json"], ["--save-frames", locked / "f"], ["--dump-intermediates", locked],
                      ["--outfile", locked / "o.mp4"]):
            proc = run_cli(*infer_args(media, tmp_path / "o.mp4", checkpoint="corrupt"), "-q", *extra)
            assert_one_error(proc, "locked", "permission denied")
    finally:
        locked.chmod(0o755)


def test_infer_json_into_a_missing_folder_and_to_stdout(media, tmp_path) -> None:
    out = tmp_path / "out.mp4"
    report = tmp_path / "new" / "deeper" / "run.json"
    proc = run_cli(*infer_args(media, out), "--box", "10", "80", "20", "100", "--json", report)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_text())["frames"] == 22  # 1 s of audio -> 22 mel chunks
    assert listing(report.parent) == ["run.json"]
    proc = run_cli(*infer_args(media, out), "--box", "10", "80", "20", "100", "--json", "-")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # stdout holds the JSON and nothing else
    assert data["frames"] == 22 and data["video_seconds"] == 0.88


# --- 4. frames too small for S3FD ----------------------------------------------------------------------


def test_frames_too_small_for_the_detector(media, tmp_path) -> None:
    out = tmp_path / "out.mp4"
    proc = run_cli(*infer_args(media, out, face="tiny", checkpoint="corrupt"), "-q")
    assert_one_error(proc, "tiny.png", "31x40", "too small for the S3FD face detector", "--box")
    proc = run_cli(*infer_args(media, out, face="video", checkpoint="corrupt"), "-q", "--resize_factor", "4")
    assert_one_error(proc, "face.mp4", "32x24 after --resize_factor", "too small", "--box")
    proc = run_cli(*infer_args(media, out, face="video", checkpoint="corrupt"), "-q", "--crop", "0", "31", "0", "-1")
    assert_one_error(proc, "128x31", "too small")
    assert listing(tmp_path) == []
    # with a fixed box nothing is detected, so a small frame is fine
    proc = run_cli(*infer_args(media, out, face="tiny"), "-q", "--box", "0", "40", "0", "31")
    assert proc.returncode == 0, proc.stderr
    assert out.exists()


def test_smallest_frame_the_detector_takes(media, tmp_path) -> None:
    """32x32 goes through S3FD (random weights find no face there: the frames pass through)."""
    out = tmp_path / "out.mp4"
    proc = run_cli(*infer_args(media, out, face="smallest"), "-q", "--on-missing-face", "skip")
    assert proc.returncode == 0, proc.stderr
    assert out.exists()


def test_detector_refuses_small_frames_in_the_library() -> None:
    from wav2lip_trt.detect import FaceDetector, MIN_FRAME_SIDE
    from wav2lip_trt.build_engines.options import MIN_S3FD_SIDE
    from wav2lip_trt.errors import InputError

    assert MIN_FRAME_SIDE == MIN_S3FD_SIDE
    with pytest.raises(InputError, match="too small for the S3FD face detector"):
        FaceDetector(runner=None).detect(np.zeros((2, 31, 64, 3), np.uint8))  # type: ignore[arg-type]


def test_boxes_file_is_checked_against_the_frame_count_both_ways_up_front(media, tmp_path) -> None:
    """Issue 17, items 9 and 10: more boxes than frames was accepted (the extra dropped), fewer failed
    only mid-run; a coordinate beyond int64 with --dump-intermediates was an OverflowError."""
    out, boxes = tmp_path / "out.mp4", tmp_path / "boxes.json"
    for count in (25, 15):  # the video has 20 frames
        boxes.write_text(json.dumps([[10, 10, 60, 70]] * count))
        proc = run_cli(*infer_args(media, out, face="video", checkpoint="corrupt"), "-q", "--boxes", boxes)
        assert_one_error(proc, str(boxes), f"has {count} boxes, the face input has 20 frames")
    for text, problem in (("[[10, 10, 60, 70],\n[10, 10, 60, 9223372036854775808]]", "line 2: the number"),
                          ("[[10, 10, 60, 9223372036854775807]]", "has a coordinate beyond")):
        boxes.write_text(text)
        proc = run_cli(*infer_args(media, out, face="video", checkpoint="corrupt"), "-q", "--boxes", boxes,
                       "--dump-intermediates", tmp_path / "dump")
        assert_one_error(proc, str(boxes), problem)
    assert listing(tmp_path) == ["boxes.json"]


# --- 5. absurd frame rates -----------------------------------------------------------------------------


def test_absurd_fps_is_refused_before_any_work(media, tmp_path) -> None:
    out = tmp_path / "out.mp4"
    for fps in ("1e9", "inf", "nan", "0", "-25", "1000.5"):
        proc = run_cli(*infer_args(media, out, checkpoint="corrupt"), "-q", "--fps", fps)
        assert_one_error(proc, "--fps", "at most 1000")
    proc = run_cli(*infer_args(media, out, face="fast_video", checkpoint="corrupt"), "-q", "--box", "0", "40", "0", "40")
    assert_one_error(proc, "fast.mp4", "5000 frames/s", "more than 1000")
    assert listing(tmp_path) == []


# --- 6. long output names ------------------------------------------------------------------------------


def test_temporary_names_fit_beside_a_long_name(tmp_path) -> None:
    for stem in ("a" * 246, "é" * 123, "x"):  # 250-byte names (é is 2 bytes), and a short one
        path = tmp_path / f"{stem}.mp4"
        tmp = temporary_sibling(path)
        try:
            assert len(os.fsencode(tmp.name)) <= 255
            assert tmp.name.startswith(".") and tmp.name.endswith(".partial.mp4") and tmp.parent == tmp_path
        finally:
            tmp.unlink()
        atomic_write_text(tmp_path / f"{stem}.json", "{}")
        assert (tmp_path / f"{stem}.json").read_text() == "{}"
    assert sorted(listing(tmp_path)) == sorted(f"{s}.json" for s in ("a" * 246, "é" * 123, "x"))


def test_output_with_a_250_byte_name(media, tmp_path) -> None:
    out = tmp_path / ("o" * 246 + ".mp4")
    proc = run_cli(*infer_args(media, out), "-q", "--box", "10", "80", "20", "100")
    assert proc.returncode == 0, proc.stderr
    assert listing(tmp_path) == [out.name]
    too_long = tmp_path / ("o" * 252 + ".mp4")
    assert_one_error(run_cli(*infer_args(media, too_long, checkpoint="corrupt"), "-q"), "--outfile", "too long")
    with pytest.raises(Exception, match="too long"):
        check_output_file(tmp_path / "new" / ("n" * 256), "--json")


# --- 7. containers that cannot hold H.264 + AAC -------------------------------------------------------


def test_output_containers_without_h264_and_aac_are_refused_up_front(media, tmp_path) -> None:
    for suffix in (".gif", ".webm", ".wav", ".mpg", ".ogv"):
        proc = run_cli(*infer_args(media, tmp_path / f"out{suffix}", checkpoint="corrupt"), "-q")
        line = assert_one_error(proc, f"out{suffix}", "cannot hold H.264 video with AAC audio")
        assert all(s in line for s in CONTAINERS)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("suffix", sorted(CONTAINERS))
def test_every_accepted_container_is_written(media, tmp_path, suffix) -> None:
    out = tmp_path / f"out{suffix.upper()}"  # the case of the extension does not matter
    with VideoWriter(out, width=64, height=48, fps=25.0, audio=media["wav"]) as writer:
        for frame in talking_face_frames(5, 64, 48):
            writer.write(frame)
    assert listing(tmp_path) == [out.name] and out.stat().st_size > 1000


# --- 8. SIGTERM, SIGHUP, SIGINT mid-run ---------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: signal.Signals(s).name)
def test_signal_mid_run_stops_ffmpeg_and_leaves_nothing(media, tmp_path, signum) -> None:
    import psutil

    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    args = ["infer", "--checkpoint_path", media["wav2lip"], "--face", media["image"], "--audio", media["long_wav"],
            "--outfile", out, "--device", "cpu", "--box", "10", "80", "20", "100", "-q"]
    # its own session, like a shell job: SIGINT to the group is what Ctrl-C at a terminal sends
    proc = subprocess.Popen([sys.executable, "-m", "wav2lip_trt", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        children: list = []
        # the temporary file is made just before ffmpeg starts: wait for both
        while not ([p for p in tmp_path.iterdir() if p.name.endswith(".partial.mp4")]
                   and any("ffmpeg" in c.name() for c in children)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no partial file and ffmpeg appeared"
            time.sleep(0.05)
            children = psutil.Process(proc.pid).children(recursive=True)
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, stderr
    assert stderr.strip().splitlines() == [f"Interrupted ({name}); no output was written."], stderr
    assert stdout == ""
    assert listing(tmp_path) == ["out.mp4"] and out.read_bytes() == b"previous result"
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert alive == [], alive


# --- 9. help and the final line; --quiet ---------------------------------------------------------------


def test_help_describes_every_option() -> None:
    import click

    from wav2lip_trt.cli import cli

    undocumented = [f"{name} {param.opts[0]}" for name, command in cli.commands.items() for param in command.params
                    if isinstance(param, click.Option) and not param.help]
    assert undocumented == []
    proc = run_cli("infer", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "Frames per S3FD face-detection batch" in text
    assert "Faces per Wav2Lip generator batch" in text
    assert "Where to run: auto = CUDA if torch sees a GPU" in text


def test_final_line_tells_video_length_and_wall_time_apart(media, tmp_path) -> None:
    out = tmp_path / "out.mp4"
    proc = run_cli(*infer_args(media, out), "--box", "10", "80", "20", "100")
    assert proc.returncode == 0, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"Wrote {re.escape(str(out))}: 22 frames, 0\.88 s of video, in \d+\.\d s wall time "
        r"\(\d+\.\d frames/s, \d+\.\d\dx real time\)", last), last
    assert proc.stdout == ""
    quiet = run_cli(*infer_args(media, out), "--box", "10", "80", "20", "100", "-q", "--resize_factor", "2")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == "", quiet.stderr  # not even the warning


def test_parity_and_bench_check_their_outputs_first(media, tmp_path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    common = ["--checkpoint_path", media["wav2lip"], "--s3fd-checkpoint", media["s3fd"], "-q"]
    assert_one_error(run_cli("parity", *common, "--json", tmp_path), "--json", "is a folder")
    assert_one_error(run_cli("parity", *common, "--work-dir", blocker / "w"), "--work-dir", "not a folder")
    assert_one_error(run_cli("bench", *common, "--json", blocker / "b.json"), "--json", "not a folder")
    assert listing(tmp_path) == ["a_file"]
