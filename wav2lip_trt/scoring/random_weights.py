"""Random-weight scoring checkpoints in the released on-disk formats, for tests, demos and CI.

Same recipe as :mod:`wav2lip_trt.random_weights` (one generator per tensor, seeded by the seed and
the tensor's name). ``syncnet_v2.model`` sees raw 0-255 pixels and raw-scale MFCCs, so its first
layers are damped and its last layer scaled until the features have the size the released model's
have (distances of a few units), which keeps float32 rounding at the level the real numbers see.
The numbers these weights give mean nothing about lip sync.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..random_weights import (
    BN_LOG_VAR_STD,
    BN_SHIFT_STD,
    BN_WEIGHT_STD,
    CONV_BIAS_STD,
    HE_GAIN,
    _normal,
    _random_state_dict,
    _rng,
    random_disc_qual_state_dict,
    save_s3fd_checkpoint,
    save_wav2lip_checkpoint,
)
from .models import SyncNetColor, SyncNetV2

EXPERT_FILE = "lipsync_expert.pth"
SYNCNET_V2_FILE = "syncnet_v2.model"
DISC_QUAL_FILE = "visual_quality_disc.pth"

SYNCNET_V2_INPUT_GAIN = {"netcnnlip.0": 1 / 512, "netcnnaud.0": 1 / 16}
"""First-layer gains: the lip tower sees 0-255 pixels, the audio tower MFCCs of size ~10."""
SYNCNET_V2_OUTPUT_GAIN = 0.25
"""Gain of both final Linear layers: features of norm ~5, distances of a few units."""


def random_expert_state_dict(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Lip-sync expert weights: He for the ReLU convs (every conv in it is followed by a ReLU)."""
    with torch.device("meta"):
        model = SyncNetColor()
    return _random_state_dict(model, seed, lambda name: HE_GAIN)


def _fan_in(module: nn.Module) -> float:
    weight = module.weight
    return float(weight[0].numel()) if isinstance(module, (nn.Conv2d, nn.Conv3d)) else float(weight.shape[1])


def _syncnet_v2_gain(name: str) -> float:
    if name in SYNCNET_V2_INPUT_GAIN:
        return HE_GAIN * SYNCNET_V2_INPUT_GAIN[name]
    if name in ("netfcaud.3", "netfclip.3"):
        return SYNCNET_V2_OUTPUT_GAIN
    return HE_GAIN


def _draw(model: nn.Module, seed: int, gain: Callable[[str], float]) -> OrderedDict[str, torch.Tensor]:
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for prefix, module in model.named_modules():
        p = f"{prefix}." if prefix else ""
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            std = gain(prefix) / math.sqrt(_fan_in(module))
            out[p + "weight"] = _normal(seed, p + "weight", module.weight.shape, std)
            out[p + "bias"] = _normal(seed, p + "bias", module.bias.shape, CONV_BIAS_STD)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            shape = module.weight.shape
            out[p + "weight"] = _normal(seed, p + "weight", shape, BN_WEIGHT_STD, mean=1.0)
            out[p + "bias"] = _normal(seed, p + "bias", shape, BN_SHIFT_STD)
            out[p + "running_mean"] = _normal(seed, p + "running_mean", shape, BN_SHIFT_STD)
            out[p + "running_var"] = _normal(seed, p + "running_var", shape, BN_LOG_VAR_STD).exp()
            steps = int(_rng(seed, p + "num_batches_tracked").integers(1_000, 500_000))
            out[p + "num_batches_tracked"] = torch.tensor(steps, dtype=torch.int64)
    if list(out) != list(model.state_dict()):
        raise RuntimeError(f"random state dict keys diverge from {type(model).__name__}")
    return out


def random_syncnet_v2_state_dict(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """syncnet_python ``S`` weights (Conv2d/Conv3d/Linear and 1-, 2- and 3-d BatchNorm)."""
    with torch.device("meta"):
        model = SyncNetV2()
    return _draw(model, seed, _syncnet_v2_gain)


def save_syncnet_v2_checkpoint(path: str | Path, state_dict: OrderedDict[str, torch.Tensor], *,
                               legacy_format: bool = True) -> Path:
    """A plain ``OrderedDict`` state dict, the format of the released ``syncnet_v2.model``."""
    return save_s3fd_checkpoint(path, state_dict, legacy_format=legacy_format)


def write_random_scoring_checkpoints(directory: str | Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """Writes ``lipsync_expert.pth``, ``syncnet_v2.model`` and ``visual_quality_disc.pth``.

    The expert and the discriminator use Wav2Lip's training wrapper (``module.`` keys, optimizer
    state), as the training scripts save them; SyncNet v2 is a plain state dict.
    """
    directory = Path(directory)
    expert = save_wav2lip_checkpoint(directory / EXPERT_FILE, random_expert_state_dict(seed))
    syncnet = save_syncnet_v2_checkpoint(directory / SYNCNET_V2_FILE, random_syncnet_v2_state_dict(seed))
    disc = save_wav2lip_checkpoint(directory / DISC_QUAL_FILE, random_disc_qual_state_dict(seed))
    return expert, syncnet, disc
