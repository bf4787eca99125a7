"""Checkpoint reading in every released variant, and one-line errors for every bad file."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from wav2lip_trt.checkpoints import (
    file_sha256,
    load_disc_qual,
    load_s3fd,
    load_wav2lip,
    read_state_dict,
)
from wav2lip_trt.errors import CheckpointError
from wav2lip_trt.models import S3FD, Wav2Lip, Wav2LipDiscQual
from wav2lip_trt.random_weights import (
    random_disc_qual_state_dict,
    random_s3fd_state_dict,
    random_wav2lip_state_dict,
    save_s3fd_checkpoint,
    save_wav2lip_checkpoint,
    write_random_checkpoints,
)


@pytest.fixture(scope="module")
def wav2lip_state() -> OrderedDict[str, torch.Tensor]:
    return random_wav2lip_state_dict(seed=0)


@pytest.fixture(scope="module")
def s3fd_state() -> OrderedDict[str, torch.Tensor]:
    return random_s3fd_state_dict(seed=0)


@pytest.fixture(scope="module")
def s3fd_file(tmp_path_factory, s3fd_state) -> Path:
    return save_s3fd_checkpoint(tmp_path_factory.mktemp("s3fd") / "s3fd.pth", s3fd_state)


def assert_same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key


def error_for(load, path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    assert path.name in message
    return message


@pytest.mark.parametrize("legacy_format", [True, False], ids=["legacy", "zip"])
@pytest.mark.parametrize("module_prefix", [True, False], ids=["module.", "bare-keys"])
def test_wav2lip_training_checkpoint_variants(tmp_path, wav2lip_state, legacy_format, module_prefix):
    path = save_wav2lip_checkpoint(
        tmp_path / "wav2lip.pth", wav2lip_state, module_prefix=module_prefix, legacy_format=legacy_format
    )
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict", "optimizer", "global_step", "global_epoch"}
    assert next(iter(raw["state_dict"])).startswith("module.") == module_prefix
    assert raw["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)

    model = load_wav2lip(path)
    assert isinstance(model, Wav2Lip)
    assert not model.training
    assert_same_weights(model, wav2lip_state)


def test_legacy_format_is_not_zip(tmp_path, s3fd_state):
    legacy = save_s3fd_checkpoint(tmp_path / "legacy.pth", s3fd_state)
    modern = save_s3fd_checkpoint(tmp_path / "zip.pth", s3fd_state, legacy_format=False)
    assert legacy.read_bytes()[:2] != b"PK"
    assert modern.read_bytes()[:2] == b"PK"


def test_wav2lip_bare_state_dict(tmp_path, wav2lip_state):
    path = tmp_path / "bare.pth"
    torch.save(OrderedDict(("module." + k, v) for k, v in wav2lip_state.items()), path)
    state = read_state_dict("wav2lip", path)
    assert list(state) == list(wav2lip_state)
    assert all(torch.equal(state[k], v) for k, v in wav2lip_state.items())


@pytest.mark.parametrize("legacy_format", [True, False], ids=["legacy", "zip"])
def test_s3fd_plain_state_dict(tmp_path, s3fd_state, legacy_format):
    path = save_s3fd_checkpoint(tmp_path / "s3fd.pth", s3fd_state, legacy_format=legacy_format)
    assert type(torch.load(path, map_location="cpu", weights_only=True)) is OrderedDict
    model = load_s3fd(path)
    assert isinstance(model, S3FD)
    assert not model.training
    assert_same_weights(model, s3fd_state)
    assert list(read_state_dict("s3fd", path)) == list(s3fd_state)


def test_disc_qual_checkpoint(tmp_path):
    state = random_disc_qual_state_dict(seed=0)
    path = save_wav2lip_checkpoint(tmp_path / "disc.pth", state)
    model = load_disc_qual(path)
    assert isinstance(model, Wav2LipDiscQual)
    assert_same_weights(model, state)


def test_write_random_checkpoints(tmp_path):
    wav2lip, s3fd = write_random_checkpoints(tmp_path, seed=1)
    assert (wav2lip.name, s3fd.name) == ("wav2lip.pth", "s3fd.pth")
    assert_same_weights(load_s3fd(s3fd), random_s3fd_state_dict(seed=1))
    assert torch.equal(
        read_state_dict("wav2lip", wav2lip)["output_block.1.weight"],
        random_wav2lip_state_dict(seed=1)["output_block.1.weight"],
    )


def test_random_weight_recipe(s3fd_state, wav2lip_state):
    assert torch.equal(random_s3fd_state_dict(seed=0)["fc7.weight"], s3fd_state["fc7.weight"])
    assert not torch.equal(random_s3fd_state_dict(seed=1)["fc7.weight"], s3fd_state["fc7.weight"])
    for name, scale in [("conv3_3_norm", 10.0), ("conv4_3_norm", 8.0), ("conv5_3_norm", 5.0)]:
        assert torch.equal(s3fd_state[f"{name}.weight"], torch.full_like(s3fd_state[f"{name}.weight"], scale))
    for head in ("conv6_2_mbox_conf", "conv7_2_mbox_conf"):
        assert s3fd_state[f"{head}.bias"][1].item() == -3.0
    counters = [v for k, v in wav2lip_state.items() if k.endswith("num_batches_tracked")]
    assert len(counters) == 50
    assert all(v.dtype == torch.int64 and v.shape == () for v in counters)
    floats = [v for k, v in wav2lip_state.items() if not k.endswith("num_batches_tracked")]
    assert all(v.dtype == torch.float32 for v in floats)
    assert (wav2lip_state["audio_encoder.0.conv_block.1.running_var"] > 0).all()
    std = s3fd_state["conv2_1.weight"].std().item()
    assert std == pytest.approx(np.sqrt(2 / (64 * 9)), rel=0.05)


def test_missing_file(tmp_path):
    message = error_for(load_wav2lip, tmp_path / "absent.pth")
    assert "not found" in message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.touch()
    assert "empty" in error_for(load_s3fd, path)


@pytest.mark.parametrize("legacy_format", [True, False], ids=["legacy", "zip"])
@pytest.mark.parametrize("keep", [1, 50, 20_000, 0.5, -10])
def test_truncated_file(tmp_path, s3fd_file, legacy_format, keep):
    source = s3fd_file
    if not legacy_format:
        state = read_state_dict("s3fd", s3fd_file)
        source = save_s3fd_checkpoint(tmp_path / "zip.pth", state, legacy_format=False)
    data = source.read_bytes()
    keep = int(len(data) * keep) if isinstance(keep, float) else keep
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[:keep])
    assert "not a readable PyTorch checkpoint" in error_for(load_s3fd, path)


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes(tmp_path, seed):
    path = tmp_path / "noise.pth"
    path.write_bytes(np.random.default_rng(seed).bytes(4096))
    assert "not a readable PyTorch checkpoint" in error_for(load_wav2lip, path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("this is not a checkpoint\n" * 20)
    error_for(load_s3fd, path)


def test_whole_model_pickle(tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    assert "state dict" in error_for(load_s3fd, path)


@pytest.mark.parametrize("content", [[1, 2, 3], {"conv1_1.weight": 1.0}, torch.zeros(3)])
def test_wrong_content_type(tmp_path, content):
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    assert "state dict" in error_for(load_s3fd, path)


def test_s3fd_file_given_as_wav2lip(s3fd_file):
    message = error_for(load_wav2lip, s3fd_file)
    assert "looks like an S3FD (s3fd.pth) checkpoint" in message
    assert "face_encoder_blocks.0.0.conv_block.0.weight" in message


def test_wav2lip_file_given_as_s3fd(tmp_path, wav2lip_state):
    path = save_wav2lip_checkpoint(tmp_path / "wav2lip_gan.pth", wav2lip_state, with_optimizer=False)
    message = error_for(load_s3fd, path)
    assert "looks like a Wav2Lip generator (wav2lip.pth) checkpoint" in message
    assert "conv1_1.weight" in message


def test_shape_mismatch(tmp_path, s3fd_state):
    state = OrderedDict(s3fd_state)
    state["fc7.weight"] = torch.zeros(1024, 1024, 3, 3)
    path = save_s3fd_checkpoint(tmp_path / "resized.pth", state)
    message = error_for(load_s3fd, path)
    assert "fc7.weight (1024, 1024, 3, 3) vs expected (1024, 1024, 1, 1)" in message
    assert "1 shape mismatch" in message


def test_missing_and_unexpected_keys(tmp_path, s3fd_state):
    state = OrderedDict(s3fd_state)
    del state["conv4_3_norm.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = save_s3fd_checkpoint(tmp_path / "edited.pth", state)
    message = error_for(load_s3fd, path)
    assert "1 missing key(s): conv4_3_norm.weight" in message
    assert "1 unexpected key(s): extra.weight" in message
    assert "does not match the S3FD (s3fd.pth) network" in message


def test_many_missing_keys_are_counted(tmp_path, wav2lip_state):
    state = OrderedDict((k, v) for k, v in wav2lip_state.items() if not k.startswith("audio_encoder.12."))
    path = save_wav2lip_checkpoint(tmp_path / "partial.pth", state, with_optimizer=False)
    message = error_for(load_wav2lip, path)
    assert "7 missing key(s): audio_encoder.12.conv_block.0.weight" in message
    assert "(4 more)" in message


def test_file_sha256(tmp_path, s3fd_file):
    assert file_sha256(s3fd_file) == hashlib.sha256(s3fd_file.read_bytes()).hexdigest()
    with pytest.raises(CheckpointError, match="absent.pth"):
        file_sha256(tmp_path / "absent.pth")
