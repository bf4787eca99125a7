"""``parity`` with the scoring networks: their towers on every rung, from the same exported files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wav2lip_trt.cli import main
from wav2lip_trt.errors import InputError
from wav2lip_trt.parity import ParityOptions, ParityReport, run_parity
from wav2lip_trt.random_weights import write_random_scoring_checkpoints

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

SMALL = dict(s3fd_batch=1, s3fd_size=(48, 64), wav2lip_batch=2, clip_frames=6, clip_seconds=0.6, clip_size=(96, 128),
             end_to_end=False)
CHECKS = ["s3fd/random", "s3fd/clip", "wav2lip/random", "wav2lip/clip",
          "expert_audio/random", "expert_face/random", "disc_qual/random", "syncnet_lip/random",
          "syncnet_audio/random", "disc_qual/clip", "expert_face/clip", "expert_audio/clip"]


@pytest.fixture(scope="module")
def scoring(tmp_path_factory) -> dict[str, Path]:
    expert, syncnet, disc = write_random_scoring_checkpoints(tmp_path_factory.mktemp("scoring-ck"), seed=2)
    return {"expert_checkpoint": expert, "syncnet_checkpoint": syncnet, "disc_checkpoint": disc}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("parity-scoring")


@pytest.fixture(scope="module")
def ladder(checkpoints, scoring, work) -> ParityReport:
    return run_parity(ParityOptions(*checkpoints, work_dir=work, rungs=("onnxruntime-fp32",), **scoring, **SMALL))


def test_every_scoring_tower_is_compared_on_random_and_clip_inputs(ladder: ParityReport) -> None:
    assert ladder, ladder.failures()
    ort = ladder.rung("onnxruntime-fp32")
    assert ort.status == "passed"
    checks = {c.name: c for c in ort.checks}
    assert list(checks) == CHECKS
    for name in CHECKS[4:]:
        (tensor,) = checks[name].tensors
        assert tensor.elements > 0 and tensor.max_abs < 1e-4, (name, tensor.max_abs)
    # the clip's 6 generated faces: 2 expert windows, 6 discriminator faces, 6 mel chunks
    assert checks["expert_face/clip"].tensors[0].shape == (2, 512)
    assert checks["disc_qual/clip"].tensors[0].shape == (6, 1)
    assert checks["expert_audio/clip"].tensors[0].shape == (6, 512)
    assert checks["syncnet_lip/random"].tensors[0].shape == (2, 1024)
    assert set(ladder.to_json()["inputs"]["checkpoints"]) == {"wav2lip", "s3fd", "expert", "disc", "syncnet"}


def test_a_missing_scoring_checkpoint_is_a_user_error(checkpoints, tmp_path) -> None:
    with pytest.raises(InputError, match="--expert-checkpoint file not found"):
        ParityOptions(*checkpoints, expert_checkpoint=tmp_path / "missing.pth").validate()


def test_command_takes_the_scoring_checkpoints(checkpoints, scoring, work, tmp_path) -> None:
    wav2lip, s3fd = checkpoints
    out = tmp_path / "parity.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["parity", "-q", "--checkpoint_path", str(wav2lip), "--s3fd-checkpoint", str(s3fd), "--work-dir", str(work),
              "--inputs", "random", "--no-end-to-end", "--s3fd-batch", "1", "--s3fd-size", "48x64", "--wav2lip-batch",
              "2", "--rungs", "onnxruntime-fp32", "--disc-checkpoint", str(scoring["disc_checkpoint"]),
              "--json", str(out)])
    assert exit_info.value.code == 0
    ort = next(r for r in json.loads(out.read_text())["rungs"] if r["name"] == "onnxruntime-fp32")
    assert [c["name"] for c in ort["checks"]] == ["s3fd/random", "wav2lip/random", "disc_qual/random"]


@pytest.mark.gpu
def test_gpu_rungs_match_torch_for_the_scoring_towers(checkpoints, scoring, work) -> None:
    """TensorRT FP32/FP16 engines of the towers (from the same ONNX files) and torch FP16."""
    assert torch.cuda.is_available()
    report = run_parity(ParityOptions(*checkpoints, work_dir=work, rungs=("tensorrt-fp32", "tensorrt-fp16", "torch-fp16"),
                                      **scoring, **SMALL))
    assert report, report.failures()
    for result in report.rungs[1:]:
        assert result.status == "passed" and [c.name for c in result.checks] == CHECKS
