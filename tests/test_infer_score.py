"""infer --score: the expert's and the quality discriminator's numbers for the faces just generated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav
from wav2lip_trt.scoring.online import OnlineScorer
from wav2lip_trt.scoring.random_weights import write_random_scoring_checkpoints


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("score")
    expert, _, disc = write_random_scoring_checkpoints(d / "ck")
    return {"face": write_video(d / "face.mp4", talking_face_frames(16, 160, 128, seed=3), 25.0),
            "audio": write_wav(d / "a.wav", float_to_int16(speechlike_audio(1.0, seed=4)), 16000),
            "expert": expert, "disc": disc}


def infer(checkpoints, clip, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "wav2lip_trt", "infer", "--checkpoint_path", str(checkpoints[0]), "--face",
           str(clip["face"]), "--audio", str(clip["audio"]), "--outfile", str(tmp_path / "out.mp4"), "--device", "cpu",
           "--box", "10", "110", "20", "140", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_scores_equal_the_scorer_on_the_dumped_faces(checkpoints, clip, tmp_path) -> None:
    proc = infer(checkpoints, clip, tmp_path, "--score", "--expert-checkpoint", str(clip["expert"]),
                 "--disc-checkpoint", str(clip["disc"]), "--json", str(tmp_path / "r.json"),
                 "--dump-intermediates", str(tmp_path / "dump"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert "expert sync loss" in proc.stderr.strip().splitlines()[-1]
    pred, mels = np.load(tmp_path / "dump" / "pred.npy"), np.load(tmp_path / "dump" / "mel_chunks.npy")
    scorer = OnlineScorer.from_checkpoints(clip["expert"], clip["disc"])
    scorer.add(np.arange(len(pred)), pred, mels)  # every face at once: batching must not matter
    want = json.loads(json.dumps(scorer.report(total_frames=len(pred))))
    assert report["expert"]["av_offset"] == want["expert"]["av_offset"]
    np.testing.assert_allclose(report["expert"]["sync_loss"], want["expert"]["sync_loss"], atol=1e-5)
    np.testing.assert_allclose(report["visual_quality"]["mean"], want["visual_quality"]["mean"], atol=1e-5)
    assert {r["stage"] for r in report["stages"]} >= {"score", "generate"}


def test_score_without_a_checkpoint_is_one_error_line(checkpoints, clip, tmp_path) -> None:
    proc = infer(checkpoints, clip, tmp_path, "--score", "-q")
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "Error: --score needs --expert-checkpoint lipsync_expert.pth (and optionally --disc-checkpoint)")
    assert not (tmp_path / "out.mp4").exists()
