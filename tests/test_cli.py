"""`wav2lip-trt infer` as a user runs it: a real subprocess, real files, exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from wav2lip_trt.cli import cli, parse_bool
from wav2lip_trt.random_weights import random_s3fd_state_dict, save_s3fd_checkpoint
from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav

from media import make_video, probe


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, its output decoded as written (``text=True`` would turn a carriage return into a newline)."""
    proc = subprocess.run([sys.executable, "-m", "wav2lip_trt", *map(str, args)], capture_output=True, cwd=cwd)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, checkpoints) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    frames = list(talking_face_frames(20, 128, 96, seed=2))
    image = d / "face.jpg"
    cv2.imwrite(str(image), frames[0])
    wav = write_wav(d / "speech.wav", float_to_int16(speechlike_audio(1.0, seed=4)), 16000)
    nan = np.full(16000, np.nan, dtype=np.float32)
    no_face = save_s3fd_checkpoint(d / "blind_s3fd.pth", _blind(random_s3fd_state_dict(0)))
    return {
        "dir": d, "video": write_video(d / "face.mp4", frames, 25.0), "image": image, "wav": wav,
        "nan": write_wav(d / "nan.wav", nan, 16000), "silent_video": make_video(d / "silent.mp4", seconds=0.5),
        "wav2lip": checkpoints[0], "s3fd": checkpoints[1], "blind_s3fd": no_face,
    }


def _blind(state: dict) -> dict:
    """An S3FD whose face logits are hopelessly low: no face anywhere."""
    for key in state:
        if key.endswith("_mbox_conf.bias"):
            state[key][-1] = -1e4
    return state


def base_args(inputs: dict[str, Path], out: Path, face: str = "video") -> list[str | Path]:
    return ["infer", "--checkpoint_path", inputs["wav2lip"], "--s3fd-checkpoint", inputs["s3fd"],
            "--face", inputs[face], "--audio", inputs["wav"], "--outfile", out]


def test_video_end_to_end(inputs, tmp_path) -> None:
    out = tmp_path / "result.mp4"
    report = tmp_path / "report.json"
    proc = run_cli(*base_args(inputs, out), "--json", report)
    assert proc.returncode == 0, proc.stderr
    assert "lip-syncing: 22/22 frames in " in proc.stderr and f"Wrote {out}" in proc.stderr  # a log's plain lines
    info = probe(out)
    assert info["video"]["codec"] == "h264" and info["video"]["pix_fmt"] == "yuv420p"
    assert (info["video"]["width"], info["video"]["height"]) == (128, 96)
    assert info["video"]["fps"] == 25.0 and info["video"]["frames"] == 22  # 1 s of audio -> 22 mel chunks
    assert info["audio"]["codec"] == "aac" and info["audio"]["sample_rate"] == 16000
    assert info["audio"]["duration"] == pytest.approx(1.0, abs=0.05)
    assert info["duration"] == pytest.approx(max(22 / 25, 1.0), abs=0.06)  # no -shortest: the longer stream
    data = json.loads(report.read_text())
    assert data["frames"] == 22 and data["outfile"] == str(out) and data["device"] == "cpu"


def test_json_and_profile_report_the_steady_rate(inputs, tmp_path) -> None:
    """Six generator batches of 4: the rate from the first written batch to the last, start-up apart; the CPU
    has no CUDA events, so no stage carries GPU seconds and no device memory joins the resources."""
    out, report = tmp_path / "result.mp4", tmp_path / "report.json"
    proc = run_cli(*base_args(inputs, out), "--box", "10", "80", "20", "100", "--wav2lip_batch_size", "4",
                   "--json", report, "--profile", "-q")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    assert data["written_batches"] == 6 and data["steady_frames_per_second"] > 0
    assert 0 < data["first_batch_seconds"] < data["seconds"]
    assert all("gpu_seconds" not in row for row in data["stages"])
    assert "max_memory_reserved" not in data["resources"] and "peak_rss_mib" in data["resources"]
    assert f"steady {data['steady_frames_per_second']:.1f} frames/s over 6 written batches" in proc.stderr


def test_still_image_kebab_case_and_quiet(inputs, tmp_path) -> None:
    out = tmp_path / "image.mp4"
    proc = run_cli("infer", "--checkpoint-path", inputs["wav2lip"], "--s3fd_checkpoint", inputs["s3fd"],
                   "--image", inputs["image"], "--audio", inputs["wav"], "--output", out, "--fps", "30",
                   "--face-det-batch-size", "2", "--wav2lip-batch-size", "8", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""
    info = probe(out)
    assert info["video"]["fps"] == 30.0 and info["video"]["frames"] == 26  # int(i * 80 / 30) over 81 mel columns
    assert "audio" in info


def test_dump_and_save_frames(inputs, tmp_path) -> None:
    out, dump, frames = tmp_path / "o.mp4", tmp_path / "dump", tmp_path / "frames"
    proc = run_cli(*base_args(inputs, out), "--dump-intermediates", dump, "--save-frames", frames, "-q",
                   "--box", "10", "80", "20", "100")
    assert proc.returncode == 0, proc.stderr
    shapes = {p.stem: (np.load(p).shape, np.load(p).dtype) for p in dump.glob("*.npy")}
    assert shapes == {
        "mel": ((80, 81), np.float32), "mel_chunks": ((22, 80, 16), np.float32), "boxes": ((22, 4), np.int64),
        "pred": ((22, 3, 96, 96), np.float32), "frames": ((22, 96, 128, 3), np.uint8),
    }
    assert (np.load(dump / "boxes.npy") == [10, 80, 20, 100]).all()
    assert len(list(frames.glob("*.png"))) == 22


@pytest.mark.parametrize("value, expected", [
    (None, False), ("true", True), ("True", True), ("False", False), ("false", False), ("1", True), ("0", False),
])
def test_static_bool_parsing(value, expected) -> None:
    assert parse_bool(None, None, value) is expected  # type: ignore[arg-type]


def test_static_bare_flag_and_value_reach_the_options(inputs, tmp_path, monkeypatch) -> None:
    seen = []

    def fake_run(options, **kwargs):
        seen.append(options.static)
        raise SystemExit(0)

    monkeypatch.setattr("wav2lip_trt.session.run_inference", fake_run)
    runner = CliRunner()
    common = [str(a) for a in base_args(inputs, tmp_path / "x.mp4")]
    for extra in (["--static"], ["--static", "False"], ["--static", "True"], [], ["--static", "--nosmooth"]):
        runner.invoke(cli, common + extra)
    assert seen == [True, False, True, False, True]


def assert_user_error(proc: subprocess.CompletedProcess[str], *fragments: str, quiet: bool = True) -> None:
    """Exit 1, no traceback, one ``Error:`` line (the only stderr line with --quiet, else the last).

    stderr is a pipe here, as in a log: whole lines, no carriage return, so ``grep '^Error:'`` finds it.
    """
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "\r" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().split("\n")
    assert [ln for ln in lines if ln.startswith("Error: ")] == lines[-1:], proc.stderr
    if quiet:
        assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def test_user_errors_are_one_line_and_leave_nothing(inputs, tmp_path) -> None:
    out = tmp_path / "out.mp4"
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(inputs["wav2lip"].read_bytes()[:5000])
    cases = [
        (["--face", tmp_path / "missing.mp4"], ["missing.mp4", "not found"]),
        (["--audio", tmp_path / "missing.wav"], ["missing.wav", "not found"]),
        (["--checkpoint_path", corrupt], ["corrupt.pth"]),
        (["--checkpoint_path", inputs["s3fd"]], ["s3fd.pth", "S3FD"]),
        (["--s3fd-checkpoint", inputs["wav2lip"]], ["wav2lip.pth"]),
        (["--audio", inputs["silent_video"]], ["silent.mp4", "no audio"]),
        (["--audio", inputs["nan"]], ["Mel contains nan"]),
        (["--s3fd-checkpoint", inputs["blind_s3fd"]], ["face.mp4", "no face detected in frame 0", "t=0.000 s"]),
        (["--box", "0", "500", "0", "20"], ["--box", "outside"]),
        (["--box", "20", "10", "0", "20"], ["--box"]),
        (["--crop", "200", "-1", "0", "-1"], ["face.mp4", "empty"]),
        (["--image", inputs["image"]], ["conflicting", "--face", "--image"]),
        (["--pads", "1", "2"], ["--pads"]),
        (["--fps", "0"], ["--fps"]),
        (["--outfile", inputs["wav"]], ["inputs are never overwritten"]),
        (["--device", "gpu"], ["--device"]),
        (["--resize_factor", "1000"], ["--resize_factor 1000", "nothing"]),
        (["--outfile", inputs["wav"] / "o.mp4"], ["cannot write under", "speech.wav"]),
        (["--outfile", tmp_path / "noext"], ["needs a file extension"]),
        (["--face", corrupt], ["corrupt.pth", "cannot open"]),
    ]
    for extra, fragments in cases:
        args = base_args(inputs, out)
        if extra[0] == "--audio":  # several --audio mean one output each: replace the audio, do not add one
            del args[args.index("--audio") : args.index("--audio") + 2]
        proc = run_cli(*args, "-q", *extra)
        assert_user_error(proc, *fragments)
        assert not out.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pth"], extra
        assert "moov atom" not in proc.stderr
    assert inputs["wav"].stat().st_size > 0


def test_failed_run_keeps_existing_output(inputs, tmp_path) -> None:
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"previous result")
    proc = run_cli(*base_args(inputs, out), "--s3fd-checkpoint", inputs["blind_s3fd"])
    assert_user_error(proc, "no face", quiet=False)
    assert out.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.mp4"]


def test_mp3_and_video_audio_inputs(inputs, tmp_path) -> None:
    from media import encode_audio

    mp3 = encode_audio(inputs["wav"], tmp_path / "speech.mp3", "-c:a", "libmp3lame")
    with_audio = write_video(tmp_path / "talk.mp4", talking_face_frames(25, 64, 48), 25.0, audio=inputs["wav"])
    for audio in (mp3, with_audio):
        out = tmp_path / f"from_{audio.suffix[1:]}.mp4"
        proc = run_cli(*base_args(inputs, out)[:-4], "--audio", audio, "--outfile", out, "-q", "--box", "0", "90", "0", "120")
        assert proc.returncode == 0, proc.stderr
        assert probe(out)["audio"]["codec"] == "aac"


def test_aliases_build_the_same_options_as_the_original_flags(inputs, tmp_path, monkeypatch) -> None:
    seen = []

    def capture(options, **kwargs):
        seen.append(options)
        raise SystemExit(0)

    monkeypatch.setattr("wav2lip_trt.session.run_inference", capture)
    runner = CliRunner()
    # the CLI validates the options (files included) before it calls run_inference
    common = ["infer", "--checkpoint_path", str(inputs["wav2lip"]), "--s3fd-checkpoint", str(inputs["s3fd"]),
              "--audio", str(inputs["wav"])]
    out = str(tmp_path / "o.mp4")
    runner.invoke(cli, common + ["--face", str(inputs["dir"]), "--outfile", out])
    runner.invoke(cli, common + ["--video", str(inputs["dir"]), "--output", out])
    runner.invoke(cli, common + ["--image", str(inputs["image"]), "--output", out])
    runner.invoke(cli, common + ["--face", str(inputs["image"]), "--outfile", out])
    assert len(seen) == 4 and seen[0] == seen[1] and seen[2] == seen[3]
    assert seen[1].face == inputs["dir"] and seen[2].face == inputs["image"] and str(seen[2].outfile) == out


def test_every_output_is_kept_off_every_input_and_other_output(inputs, tmp_path) -> None:
    model = tmp_path / "syncnet_v2.model"
    model.write_bytes(b"weights")
    boxes = tmp_path / "boxes.json"
    boxes.write_text("[]")
    folder = tmp_path / "frames"
    cases = [
        (["score", "--video", inputs["video"], "--syncnet-checkpoint", model, "--json", tmp_path / "." / model.name],
         f"--json {tmp_path / model.name} is the same file as --syncnet-checkpoint {model}; inputs are never overwritten"),
        ([*base_args(inputs, tmp_path / "o.mp4"), "--boxes", boxes, "--json", tmp_path / "sub" / ".." / "boxes.json"],
         f"--json {tmp_path}/sub/../boxes.json is the same file as --boxes {boxes}; inputs are never overwritten"),
        ([*base_args(inputs, tmp_path / "o.mp4"), "--box", "0", "50", "0", "50", "--save-frames", folder,
          "--dump-intermediates", tmp_path / "x" / ".." / "frames"],
         f"--dump-intermediates {tmp_path}/x/../frames is the same file as --save-frames {folder}; give each output "
         "its own path"),
    ]
    for args, message in cases:
        proc = run_cli(*args)
        assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [f"Error: {message}"], proc.stderr
    assert model.read_bytes() == b"weights" and boxes.read_text() == "[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boxes.json", "syncnet_v2.model"]
