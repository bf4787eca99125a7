"""infer --score: the expert's and the quality discriminator's numbers for the faces just generated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav
from wav2lip_trt.scoring.online import OnlineScorer
from wav2lip_trt.random_weights import write_random_scoring_checkpoints


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


class ReusedBuffersRunner:
    """A real torch runner with TensorRT's output contract: every output is a view of one buffer
    that the next call overwrites (as an engine's output bindings are)."""

    def __init__(self, inner) -> None:
        self.inner, self.buffers = inner, {}
        self.name, self.device, self.stream = inner.name, inner.device, inner.stream
        self.input_names, self.output_names, self.input_dtypes = inner.input_names, inner.output_names, inner.input_dtypes

    def infer(self, feed):
        out = {}
        for name, value in self.inner.infer(feed).items():
            buffer = self.buffers.setdefault(name, torch.empty(256 * value[0].numel()))
            view = buffer[: value.numel()].view(value.shape)
            view.copy_(value)
            out[name] = view
        return out


def test_scorer_keeps_its_own_copies_of_runner_outputs(clip) -> None:
    """Embeddings and probabilities outlive the runner call that made them: with runners that reuse
    their output buffers, the scores equal those of the plain modules."""
    from wav2lip_trt.backends import RunnerRequest, create_graph_runners
    from wav2lip_trt.scoring.networks import ExpertTowers, QualityTower

    rng = np.random.default_rng(5)
    pred = rng.uniform(0, 1, (23, 3, 96, 96)).astype(np.float32)
    mels = rng.uniform(-4, 4, (23, 80, 16)).astype(np.float32)
    want = OnlineScorer.from_checkpoints(clip["expert"], clip["disc"])
    graphs = {"expert_audio": clip["expert"], "expert_face": clip["expert"], "disc_qual": clip["disc"]}
    with create_graph_runners("torch", graphs, RunnerRequest(None, None, torch.device("cpu"))) as made:
        wrapped = {g: ReusedBuffersRunner(r) for g, r in made.runners.items()}
        got = OnlineScorer(ExpertTowers(wrapped["expert_audio"], wrapped["expert_face"]),
                           QualityTower(wrapped["disc_qual"]), batch_size=4)
        for scorer in (want, got):
            for start in range(0, 23, 6):  # several add() calls, several forwards per call
                scorer.add(np.arange(start, min(23, start + 6)), pred[start:start + 6], mels[start:start + 6])
    a, b = want.report(), got.report()
    assert b["expert"]["av_offset"] == a["expert"]["av_offset"]
    np.testing.assert_allclose(b["expert"]["similarity"], a["expert"]["similarity"], atol=1e-6)
    np.testing.assert_allclose(b["expert"]["offset_curve"], a["expert"]["offset_curve"], atol=1e-6)
    np.testing.assert_allclose(b["visual_quality"]["per_frame"], a["visual_quality"]["per_frame"], atol=1e-6)


def test_one_face_per_call_equals_all_at_once(clip) -> None:
    """Many small add() calls (results compacted along the way, shifts paired across calls) give the
    same report as one call with every face."""
    rng = np.random.default_rng(8)
    pred = rng.uniform(0, 1, (45, 3, 96, 96)).astype(np.float32)
    mels = rng.uniform(-4, 4, (45, 80, 16)).astype(np.float32)
    one = OnlineScorer.from_checkpoints(clip["expert"], clip["disc"])
    one.add(np.arange(45), pred, mels)
    many = OnlineScorer.from_checkpoints(clip["expert"], clip["disc"])
    for i in range(45):
        if i != 20:  # a frame without a face: its windows have no score
            many.add([i], pred[i:i + 1], mels[i:i + 1])
    a, b = one.report(), many.report()
    assert len(many._similarity) <= 33 and len(many._quality) <= 33  # compacted, not one tensor per call
    sims_a, sims_b = a["expert"]["similarity"], b["expert"]["similarity"]
    assert [i for i, v in enumerate(sims_b) if v is None] == [16, 17, 18, 19, 20]
    np.testing.assert_allclose([v for i, v in enumerate(sims_b) if v is not None],
                               [v for i, v in enumerate(sims_a) if not 16 <= i <= 20], atol=1e-6)
    assert b["visual_quality"]["per_frame"][20] is None
    assert b["expert"]["offset_counts"] != a["expert"]["offset_counts"]  # frame 20's pairs are missing


def test_score_every_k_scores_the_windows_and_faces_of_every_kth_frame(clip) -> None:
    """every=5: windows 0, 5, 10 ... and faces 0, 5, 10 ... exactly as with every window scored;
    the rest None; the offset curve from the scored windows only."""
    rng = np.random.default_rng(9)
    pred = rng.uniform(0, 1, (32, 3, 96, 96)).astype(np.float32)
    mels = rng.uniform(-4, 4, (32, 80, 16)).astype(np.float32)
    full = OnlineScorer.from_checkpoints(clip["expert"], clip["disc"])
    full.add(np.arange(32), pred, mels)
    sampled = OnlineScorer(full.expert, full.disc, every=5)
    for start in range(0, 32, 7):  # batch edges that do not line up with K
        sampled.add(np.arange(start, min(32, start + 7)), pred[start:start + 7], mels[start:start + 7])
    a, b = full.report(), sampled.report()
    sims_a, sims_b = a["expert"]["similarity"], b["expert"]["similarity"]
    assert len(sims_b) == 28 and [i for i, v in enumerate(sims_b) if v is not None] == [0, 5, 10, 15, 20, 25]
    np.testing.assert_allclose([sims_b[i] for i in range(0, 28, 5)], [sims_a[i] for i in range(0, 28, 5)], atol=1e-6)
    quality_b = b["visual_quality"]["per_frame"]
    assert [i for i, v in enumerate(quality_b) if v is not None] == list(range(0, 32, 5))
    np.testing.assert_allclose([quality_b[i] for i in range(0, 32, 5)],
                               [a["visual_quality"]["per_frame"][i] for i in range(0, 32, 5)], atol=1e-6)
    # each scored window pairs with the audio (every frame's chunk) within 15 frames of it
    assert sum(b["expert"]["offset_counts"]) == sum(1 for w in range(0, 28, 5) for j in range(32) if abs(j - w) <= 15)
    assert b["expert"]["every"] == 5 and b["visual_quality"]["every"] == 5 and a["expert"]["every"] == 1


def test_score_every_needs_score_and_a_whole_number(checkpoints, clip, tmp_path) -> None:
    proc = infer(checkpoints, clip, tmp_path, "--score-every", "5", "-q")
    assert proc.returncode == 1 and proc.stderr.strip() == "Error: --score-every applies to --score"
    proc = infer(checkpoints, clip, tmp_path, "--score", "--expert-checkpoint", str(clip["expert"]),
                 "--score-every", "0", "-q")
    assert proc.returncode == 1 and "--score-every must be a whole number of frames, at least 1" in proc.stderr


def test_a_wrong_scoring_checkpoint_fails_before_detection(checkpoints, clip, tmp_path) -> None:
    """The scoring networks load before S3FD runs: nothing was detected (the cache stays empty)."""
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "wav2lip_trt", "infer", "--checkpoint_path", str(checkpoints[0]), "--s3fd-checkpoint",
           str(checkpoints[1]), "--face", str(clip["face"]), "--audio", str(clip["audio"]), "--outfile",
           str(tmp_path / "out.mp4"), "--device", "cpu", "--cache-dir", str(cache), "--score", "--expert-checkpoint",
           str(checkpoints[1]), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"Error: {checkpoints[1]}: looks like an S3FD (s3fd.pth) checkpoint, not a lip-sync")
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))
    assert not (tmp_path / "out.mp4").exists()
