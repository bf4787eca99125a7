"""``wav2lip-trt score``: the table, --json, and one ``Error:`` line for every user error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from wav2lip_trt.cli import cli
from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav
from wav2lip_trt.random_weights import write_random_scoring_checkpoints

pytest.importorskip("python_speech_features")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("score-cli")
    expert, syncnet, disc = write_random_scoring_checkpoints(folder / "ck", seed=0)
    wav = write_wav(folder / "speech.wav", float_to_int16(speechlike_audio(0.8, seed=1)), 16000)
    crop = write_video(folder / "crop.mp4", talking_face_frames(20, 224, 224, seed=1), 25.0, audio=wav)
    silent = write_video(folder / "silent.mp4", talking_face_frames(20, 224, 224, seed=1), 25.0)
    short = write_video(folder / "short.mp4", talking_face_frames(5, 224, 224, seed=1), 25.0, audio=wav)
    return {"expert": expert, "syncnet": syncnet, "disc": disc, "wav": wav, "crop": crop, "silent": silent,
            "short": short, "folder": folder}


def invoke(*args: str | Path):
    return CliRunner().invoke(cli, ["score", *map(str, args), "--device", "cpu"])


def assert_error(result, *fragments: str) -> str:
    """Exit 1, no traceback, one ``Error:`` line, the last on stderr (after info lines unless --quiet)."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("Error: ")] == lines[-1:], result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]


def test_crops_table_and_json(media, tmp_path):
    out = tmp_path / "report.json"
    result = invoke("--video", media["crop"], "--crops", "--syncnet-checkpoint", media["syncnet"],
                    "--expert-checkpoint", media["expert"], "--disc-checkpoint", media["disc"], "--json", out, "-q")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["lse"]) >= {"av_offset", "min_dist", "confidence", "framewise_confidence", "dists"}
    assert len(report["lse"]["dists"]) == 15 and len(report["lse"]["framewise_confidence"]) == 15
    assert {"sync_loss", "similarity", "av_offset", "offset_curve"} <= set(report["expert"])
    assert len(report["visual_quality"]["per_frame"]) == 17  # output frames = mel chunks of 0.8 s (inference.py)
    assert result.stdout == ""  # --quiet

    table = invoke("--video", media["crop"], "--crops", "--syncnet-checkpoint", media["syncnet"],
                   "--expert-checkpoint", media["expert"])
    assert table.exit_code == 0
    head, row = table.stdout.strip().splitlines()
    assert "LSE-D" in head and "LSE-C" in head and "expert sim" in head
    assert row.split()[:4] == ["crop", "0-19", "15", str(report["lse"]["av_offset"])]
    assert float(row.split()[4]) == pytest.approx(report["lse"]["min_dist"], abs=1e-3)


def test_json_to_stdout_is_only_json(media):
    result = invoke("--video", media["crop"], "--crops", "--syncnet-checkpoint", media["syncnet"], "--json", "-")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["crops"] is True


@pytest.mark.parametrize(("case", "fragments"), [
    ("missing video", ("--video", "file not found")),
    ("no audio stream", ("silent.mp4 has no audio stream", "--audio")),
    ("swapped checkpoint", ("looks like a lip-sync expert (lipsync_expert.pth) checkpoint, not a SyncNet v2",)),
    ("too short", ("too short to score", "got 5 frames")),
    ("json is a folder", ("--json", "is a folder")),
    ("missing python_speech_features", ("pip install 'wav2lip-trt[score]'",)),
])
def test_user_errors_are_one_line(media, monkeypatch, case, fragments):
    args = {"video": media["crop"], "syncnet": media["syncnet"], "extra": []}
    if case == "missing video":
        args["video"] = media["folder"] / "absent.mp4"
    elif case == "no audio stream":
        args["video"] = media["silent"]
    elif case == "swapped checkpoint":
        args["syncnet"] = media["expert"]
    elif case == "too short":
        args["video"] = media["short"]
    elif case == "json is a folder":
        args["extra"] = ["--json", media["folder"]]
    else:
        monkeypatch.setitem(sys.modules, "python_speech_features", None)
    assert_error(invoke("--video", args["video"], "--crops", "--syncnet-checkpoint", args["syncnet"], *args["extra"]),
                 *fragments)


def test_no_face_track_is_one_line(media, checkpoints, monkeypatch):
    monkeypatch.setattr("wav2lip_trt.scoring.score.detect_all_faces",
                        lambda s3fd, frames, options, device="cpu": [np.zeros((0, 5))] * len(frames))
    s3fd = checkpoints[1]  # conftest's random-weight s3fd.pth
    result = invoke("--video", media["crop"], "--syncnet-checkpoint", media["syncnet"], "--s3fd-checkpoint", s3fd,
                    "--min-track", "10")
    assert_error(result, "no face track to score", "in 0 of 20 frames")


def test_real_process_exit_code_and_help(media):
    """The installed entry point: exit 1 and a single stderr line; --help lists the command."""
    proc = subprocess.run([sys.executable, "-m", "wav2lip_trt", "score", "--video", str(media["silent"]), "--crops",
                           "--syncnet-checkpoint", str(media["syncnet"]), "-q"], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"Error: {media['silent']} has no audio stream; give the audio with --audio"]
    result = CliRunner().invoke(cli, ["--help"])
    assert "score" in result.output
