"""Random-weight checkpoints in the released on-disk formats.

Tests, the demo and CI cannot ship the released weights, so they use these instead. The
initialisation is scaled so the networks behave like trained ones where the pipeline cares:
Wav2Lip outputs spread over (0, 1) instead of saturating, and S3FD gives finite, spread scores
with some above the 0.5 detection threshold. Every tensor has its own generator seeded by
``(seed, crc32(name))``, so a tensor's values do not depend on which other tensors exist.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .models import S3FD, L2Norm, SyncNetColor, SyncNetV2, Wav2Lip, Wav2LipDiscQual

CONV_BIAS_STD = 0.01
BN_WEIGHT_STD = 0.05
BN_SHIFT_STD = 0.02  # BN bias and running_mean
BN_LOG_VAR_STD = 0.05
S3FD_L2NORM_SCALES = {"conv3_3_norm": 10.0, "conv4_3_norm": 8.0, "conv5_3_norm": 5.0}
S3FD_FACE_LOGIT_BIAS = {"conv6_2_mbox_conf": -3.0, "conv7_2_mbox_conf": -3.0}
"""The two coarsest levels (256 and 512 px anchors) would otherwise claim whole frames as faces."""

HE_GAIN = math.sqrt(2.0)

WAV2LIP_FILE = "wav2lip.pth"
S3FD_FILE = "s3fd.pth"
EXPERT_FILE = "lipsync_expert.pth"
SYNCNET_V2_FILE = "syncnet_v2.model"
DISC_QUAL_FILE = "visual_quality_disc.pth"

SYNCNET_V2_INPUT_GAIN = {"netcnnlip.0": 1 / 512, "netcnnaud.0": 1 / 16}
"""syncnet_python's first layers see raw 0-255 pixels and MFCCs of size ~10, not unit-scale inputs."""
SYNCNET_V2_OUTPUT_GAIN = 0.25
"""Both final Linear layers: features of norm ~5, distances of a few units, as the released model's
(so float32 rounding is at the level the real numbers see)."""


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _normal(seed: int, name: str, shape: torch.Size, std: float, mean: float = 0.0) -> torch.Tensor:
    values = _rng(seed, name).standard_normal(tuple(shape)) * std + mean
    return torch.from_numpy(values.astype(np.float32))


def _fan_in(layer: nn.Module) -> float:
    if isinstance(layer, nn.ConvTranspose2d):
        (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
        return layer.in_channels * kh * kw / (sh * sw)
    return float(layer.weight[0].numel())  # Conv2d/Conv3d (in / groups x kernel), Linear (in)


def _random_state_dict(
    model: nn.Module, seed: int, gain: Callable[[str], float]
) -> OrderedDict[str, torch.Tensor]:
    """Draws every tensor of ``model.state_dict()`` (built on the meta device) from the recipe."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for prefix, module in model.named_modules():
        p = f"{prefix}." if prefix else ""
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.Linear)):
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
        elif isinstance(module, L2Norm):
            out[p + "weight"] = torch.full(module.weight.shape, S3FD_L2NORM_SCALES[prefix])

    if list(out) != list(model.state_dict()):
        raise RuntimeError(f"random state dict keys diverge from {type(model).__name__}")
    return out


def random_wav2lip_state_dict(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Wav2Lip weights; the last conv gets gain 3 so the sigmoid output is not stuck near 0.5."""
    with torch.device("meta"):
        model = Wav2Lip()
    return _random_state_dict(model, seed, lambda name: 3.0 if name == "output_block.1" else 1.0)


def random_disc_qual_state_dict(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Discriminator weights: He for the LeakyReLU convs, LeCun for the final logit."""
    with torch.device("meta"):
        model = Wav2LipDiscQual()
    return _random_state_dict(
        model, seed, lambda name: 1.0 if name.startswith("binary_pred") else HE_GAIN
    )


def random_expert_state_dict(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Lip-sync expert weights: He for the ReLU convs (every conv in it is followed by a ReLU)."""
    with torch.device("meta"):
        model = SyncNetColor()
    return _random_state_dict(model, seed, lambda name: HE_GAIN)


def _syncnet_v2_gain(name: str) -> float:
    if name in SYNCNET_V2_INPUT_GAIN:
        return HE_GAIN * SYNCNET_V2_INPUT_GAIN[name]
    if name in ("netfcaud.3", "netfclip.3"):
        return SYNCNET_V2_OUTPUT_GAIN
    return HE_GAIN


def random_syncnet_v2_state_dict(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """syncnet_python ``S`` weights (Conv2d/Conv3d/Linear and 1-, 2- and 3-d BatchNorm)."""
    with torch.device("meta"):
        model = SyncNetV2()
    return _random_state_dict(model, seed, _syncnet_v2_gain)


def _s3fd_gain(name: str) -> float:
    if "_mbox_" in name:
        return 1.0
    if name == "conv1_1":
        return HE_GAIN / 64  # raw 0-255 pixels minus the means, not unit-scale inputs
    return HE_GAIN


def random_s3fd_state_dict(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """S3FD weights: He trunk, LeCun heads, released L2Norm scales, damped coarse-level faces."""
    with torch.device("meta"):
        model = S3FD()
    state = _random_state_dict(model, seed, _s3fd_gain)
    for head, bias in S3FD_FACE_LOGIT_BIAS.items():
        state[f"{head}.bias"][1] = bias
    return state


def _adam_state(state_dict: Mapping[str, torch.Tensor], step: int) -> dict:
    """A small Adam-shaped optimizer state: the released files carry one, so loaders must cope."""
    params = [k for k, v in state_dict.items() if v.is_floating_point()]
    first = state_dict[params[0]]
    return {
        "state": {
            0: {
                "step": step,
                "exp_avg": torch.zeros_like(first),
                "exp_avg_sq": torch.zeros_like(first),
            }
        },
        "param_groups": [
            {
                "lr": 1e-4,
                "betas": (0.9, 0.999),
                "eps": 1e-8,
                "weight_decay": 0,
                "amsgrad": False,
                "params": list(range(len(params))),
            }
        ],
    }


def _save(obj: object, path: str | Path, legacy_format: bool) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy_format)
    return path


def save_wav2lip_checkpoint(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    module_prefix: bool = True,
    legacy_format: bool = True,
    with_optimizer: bool = True,
    global_step: int = 250_000,
    global_epoch: int = 300,
) -> Path:
    """Writes a training-script-style checkpoint, by default exactly like the released files.

    Released files use the pre-1.6 (non-zip) pickle, a DataParallel ``module.`` key prefix and
    carry the Adam state; each option turns one of these off to exercise the other variants.
    """
    prefix = "module." if module_prefix else ""
    ckpt: dict[str, object] = {"state_dict": OrderedDict((prefix + k, v) for k, v in state_dict.items())}
    if with_optimizer:
        ckpt["optimizer"] = _adam_state(state_dict, global_step)
    ckpt["global_step"] = global_step
    ckpt["global_epoch"] = global_epoch
    return _save(ckpt, path, legacy_format)


def save_s3fd_checkpoint(
    path: str | Path, state_dict: Mapping[str, torch.Tensor], *, legacy_format: bool = True
) -> Path:
    """Writes a plain ``OrderedDict`` state dict, the format of the released ``s3fd.pth``."""
    return _save(OrderedDict(state_dict), path, legacy_format)


def save_syncnet_v2_checkpoint(path: str | Path, state_dict: Mapping[str, torch.Tensor], *,
                               legacy_format: bool = True) -> Path:
    """A plain ``OrderedDict`` state dict, the format of the released ``syncnet_v2.model``."""
    return _save(OrderedDict(state_dict), path, legacy_format)


def write_random_scoring_checkpoints(directory: str | Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """Writes ``lipsync_expert.pth``, ``syncnet_v2.model`` and ``visual_quality_disc.pth``.

    The expert and the discriminator use Wav2Lip's training wrapper (``module.`` keys, optimizer
    state), as the training scripts save them; SyncNet v2 is a plain state dict. The numbers these
    weights give mean nothing about lip sync.
    """
    directory = Path(directory)
    expert = save_wav2lip_checkpoint(directory / EXPERT_FILE, random_expert_state_dict(seed))
    syncnet = save_syncnet_v2_checkpoint(directory / SYNCNET_V2_FILE, random_syncnet_v2_state_dict(seed))
    disc = save_wav2lip_checkpoint(directory / DISC_QUAL_FILE, random_disc_qual_state_dict(seed))
    return expert, syncnet, disc


def write_random_checkpoints(directory: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Writes ``wav2lip.pth`` and ``s3fd.pth`` (released formats) and returns their paths."""
    directory = Path(directory)
    wav2lip = save_wav2lip_checkpoint(directory / WAV2LIP_FILE, random_wav2lip_state_dict(seed))
    s3fd = save_s3fd_checkpoint(directory / S3FD_FILE, random_s3fd_state_dict(seed))
    return wav2lip, s3fd
