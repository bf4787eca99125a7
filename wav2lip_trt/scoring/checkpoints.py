"""Loading the scoring networks' released files, with the generator's one-line errors.

``lipsync_expert.pth`` and the quality discriminator come in Wav2Lip's training wrapper
(``{"state_dict": {"module.<key>": ...}, "optimizer": ..., ...}``); ``syncnet_v2.model`` is a
plain state dict. Five released files are easy to mix up, so a file that holds another of the
five networks is named in the error ("looks like a SyncNet v2 (syncnet_v2.model) checkpoint, not
a lip-sync expert (lipsync_expert.pth) one"). Reading and unwrapping reuse
:mod:`wav2lip_trt.checkpoints`, so every corrupt-file message is the same as the generator's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import cast

import torch
from torch import nn

from ..checkpoints import _article, _extract_state_dict, _listed, _load_file, _Network, _shape
from ..errors import CheckpointError
from ..models import S3FD, Wav2Lip, Wav2LipDiscQual
from .models import SyncNetColor, SyncNetV2

EXPERT = _Network("lip-sync expert (lipsync_expert.pth)", SyncNetColor, ("face_encoder.", "audio_encoder."))
SYNCNET_V2 = _Network("SyncNet v2 (syncnet_v2.model)", SyncNetV2, ("netcnnlip.", "netcnnaud.", "netfclip."))
DISC_QUAL = _Network("Wav2Lip quality-discriminator", Wav2LipDiscQual, ("binary_pred.",))
_WAV2LIP = _Network("Wav2Lip generator (wav2lip.pth)", Wav2Lip, ("face_decoder_blocks.",))
_S3FD = _Network("S3FD (s3fd.pth)", S3FD, ("conv1_1.", "fc7."))
# Order matters: the generator and the discriminator also have keys under "face_encoder".
_KNOWN = (_WAV2LIP, _S3FD, DISC_QUAL, SYNCNET_V2, EXPERT)


def guess_network(keys: Mapping[str, object]) -> str | None:
    """The name of the released network whose keys these look like, or None."""
    for net in _KNOWN:
        if any(k.startswith(net.signature) for k in keys):
            return net.name
    return None


def _check_keys(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], path: Path,
                net: _Network) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {_shape(state[k].shape)} vs expected {_shape(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatch(es): {_listed(mismatched)}")
    other = guess_network(state)
    if other is not None and other != net.name:
        head = f"looks like {_article(other)} {other} checkpoint, not {_article(net.name)} {net.name} one"
    else:
        head = f"does not match the {net.name} network"
    raise CheckpointError(f"{path}: {head}: " + "; ".join(parts))


def read_state_dict(path: str | Path, net: _Network) -> dict[str, torch.Tensor]:
    """The validated, unprefixed state dict of ``net`` (:data:`EXPERT`, :data:`SYNCNET_V2`, :data:`DISC_QUAL`)."""
    path = Path(path)
    state = _extract_state_dict(_load_file(path), path, net)
    with torch.device("meta"):
        expected = net.build().state_dict()
    _check_keys(state, expected, path, net)
    return {k: state[k] for k in expected}


def _load(path: str | Path, net: _Network, device: str | torch.device) -> nn.Module:
    state = read_state_dict(path, net)
    with torch.device("meta"):
        model = net.build()
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=torch.float32).eval()


def load_expert(path: str | Path, device: str | torch.device = "cpu") -> SyncNetColor:
    """The lip-sync expert in eval mode (BatchNorm on running statistics, unlike Wav2Lip training)."""
    return cast(SyncNetColor, _load(path, EXPERT, device))


def load_syncnet_v2(path: str | Path, device: str | torch.device = "cpu") -> SyncNetV2:
    """syncnet_python's network for LSE-D / LSE-C, in eval mode."""
    return cast(SyncNetV2, _load(path, SYNCNET_V2, device))


def load_disc_qual(path: str | Path, device: str | torch.device = "cpu") -> Wav2LipDiscQual:
    """The visual quality discriminator; unlike the generic loader, names every swapped released file."""
    return cast(Wav2LipDiscQual, _load(path, DISC_QUAL, device))


