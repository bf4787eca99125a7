"""Scoring networks: released key lists, strict loading, one-line errors, swapped files named."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from wav2lip_trt.errors import CheckpointError
from wav2lip_trt.models import Wav2LipDiscQual
from wav2lip_trt.random_weights import random_disc_qual_state_dict, save_wav2lip_checkpoint
from wav2lip_trt.checkpoints import load_disc_qual, load_expert, load_s3fd, load_syncnet_v2, load_wav2lip
from wav2lip_trt.models import SyncNetColor, SyncNetV2
from wav2lip_trt.random_weights import (
    random_expert_state_dict,
    random_syncnet_v2_state_dict,
    save_syncnet_v2_checkpoint,
    write_random_scoring_checkpoints,
)

DATA = Path(__file__).parent / "data"
SPEC = Path(__file__).parents[1].parent / "shared" / "spec"


def released_keys(name: str) -> dict[str, list[int]]:
    """The key list of a released file: the spec's copy, else the one in tests/data."""
    for folder in (SPEC, DATA):
        if (folder / name).is_file():
            return json.loads((folder / name).read_text())
    pytest.skip(f"{name} not found in {SPEC} or {DATA}")


@pytest.mark.parametrize(("module", "keys"), [
    (SyncNetColor, "syncnet_keys.json"),
    (SyncNetV2, "syncnet_v2_keys.json"),
    (Wav2LipDiscQual, "disc_qual_keys.json"),
])
def test_state_dict_is_the_released_key_list(module, keys):
    expected = released_keys(keys)
    with torch.device("meta"):
        state = module().state_dict()
    assert list(state) == list(expected)  # same names, same order
    assert {k: list(v.shape) for k, v in state.items()} == expected


@pytest.fixture(scope="module")
def states() -> dict[str, OrderedDict[str, torch.Tensor]]:
    return {"expert": random_expert_state_dict(0), "syncnet": random_syncnet_v2_state_dict(0),
            "disc": random_disc_qual_state_dict(0)}


@pytest.fixture(scope="module")
def files(tmp_path_factory, checkpoints) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("scoring-ckpt")
    expert, syncnet, disc = write_random_scoring_checkpoints(folder, seed=0)
    wav2lip, s3fd = checkpoints  # the session's generator and detector files (conftest)
    return {"expert": expert, "syncnet": syncnet, "disc": disc, "wav2lip": wav2lip, "s3fd": s3fd}


def same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    loaded = model.state_dict()
    return list(loaded) == list(state) and all(
        loaded[k].dtype == v.dtype and torch.equal(loaded[k], v) for k, v in state.items())


def test_released_formats(files):
    expert = torch.load(files["expert"], map_location="cpu", weights_only=True)
    assert set(expert) == {"state_dict", "optimizer", "global_step", "global_epoch"}
    assert all(k.startswith("module.") for k in expert["state_dict"])
    syncnet = torch.load(files["syncnet"], map_location="cpu", weights_only=True)
    assert type(syncnet) is OrderedDict and len(syncnet) == 102
    assert files["syncnet"].read_bytes()[:2] != b"PK"  # legacy pickle, like the released files
    assert files["syncnet"].name == "syncnet_v2.model" and files["expert"].name == "lipsync_expert.pth"


def test_loaders_load_strictly_in_eval_mode(files, states):
    for load, name in ((load_expert, "expert"), (load_syncnet_v2, "syncnet"), (load_disc_qual, "disc")):
        model = load(files[name])
        assert not model.training
        assert same_weights(model, states[name])


@pytest.mark.parametrize("legacy_format", [True, False], ids=["legacy", "zip"])
@pytest.mark.parametrize("module_prefix", [True, False], ids=["module.", "bare-keys"])
def test_expert_variants(tmp_path, states, legacy_format, module_prefix):
    path = save_wav2lip_checkpoint(tmp_path / "expert.pth", states["expert"], legacy_format=legacy_format,
                                   module_prefix=module_prefix)
    assert same_weights(load_expert(path), states["expert"])


def test_syncnet_v2_zip_and_bare(tmp_path, states):
    path = save_syncnet_v2_checkpoint(tmp_path / "s.model", states["syncnet"], legacy_format=False)
    assert same_weights(load_syncnet_v2(path), states["syncnet"])


def test_random_weights_are_deterministic_and_sized(states):
    assert torch.equal(random_syncnet_v2_state_dict(0)["netfclip.3.weight"], states["syncnet"]["netfclip.3.weight"])
    assert not torch.equal(random_expert_state_dict(1)["face_encoder.0.conv_block.0.weight"],
                           states["expert"]["face_encoder.0.conv_block.0.weight"])
    model = SyncNetV2()
    model.load_state_dict(states["syncnet"])
    model.eval()
    with torch.no_grad():
        lip = model.forward_lip(torch.full((2, 3, 5, 224, 224), 120.0))
    assert torch.isfinite(lip).all() and 0.5 < float(lip.norm(dim=1).mean()) < 50  # distances of a few units


def one_line(load, path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize(("load", "given", "looks_like"), [
    (load_syncnet_v2, "expert", "looks like a lip-sync expert (lipsync_expert.pth) checkpoint, not a SyncNet v2"),
    (load_expert, "syncnet", "looks like a SyncNet v2 (syncnet_v2.model) checkpoint, not a lip-sync expert"),
    (load_expert, "disc", "looks like a Wav2Lip quality discriminator (visual_quality_disc.pth) checkpoint, not a lip-sync expert"),
    (load_disc_qual, "expert", "looks like a lip-sync expert (lipsync_expert.pth) checkpoint"),
    (load_disc_qual, "syncnet", "looks like a SyncNet v2 (syncnet_v2.model) checkpoint"),
    (load_syncnet_v2, "wav2lip", "looks like a Wav2Lip generator (wav2lip.pth) checkpoint"),
    (load_expert, "s3fd", "looks like an S3FD (s3fd.pth) checkpoint"),
    # one registry: the generator's and the detector's loaders name the scoring files too
    (load_wav2lip, "syncnet", "looks like a SyncNet v2 (syncnet_v2.model) checkpoint, not a Wav2Lip generator"),
    (load_wav2lip, "expert", "looks like a lip-sync expert (lipsync_expert.pth) checkpoint, not a Wav2Lip generator"),
    (load_s3fd, "disc", "looks like a Wav2Lip quality discriminator (visual_quality_disc.pth) checkpoint, not an S3FD"),
])
def test_swapped_checkpoint_names_the_file_it_looks_like(files, load, given, looks_like):
    assert looks_like in one_line(load, files[given])


def test_missing_and_mismatched_keys(tmp_path, states):
    state = OrderedDict(states["syncnet"])
    del state["netfcaud.3.bias"]
    state["netfclip.3.weight"] = torch.zeros(512, 512)
    message = one_line(load_syncnet_v2, save_syncnet_v2_checkpoint(tmp_path / "bad.model", state))
    assert "does not match the SyncNet v2 (syncnet_v2.model) network" in message
    assert "1 missing key(s): netfcaud.3.bias" in message
    assert "netfclip.3.weight (512, 512) vs expected (1024, 512)" in message


def test_bad_files(tmp_path):
    assert "not found" in one_line(load_expert, tmp_path / "absent.pth")
    (tmp_path / "empty.model").touch()
    assert "empty" in one_line(load_syncnet_v2, tmp_path / "empty.model")
    (tmp_path / "noise.model").write_bytes(b"\x80\x02garbage" * 100)
    assert "not a readable PyTorch checkpoint" in one_line(load_syncnet_v2, tmp_path / "noise.model")
