"""Reading the released checkpoints, with one-line errors for every way a file can be wrong.

Checkpoints are the first thing a user gets wrong (wrong file, half-finished download, the
detector passed as the generator), so every such problem becomes a :class:`CheckpointError`
that names the file and the problem instead of a pickle or ``load_state_dict`` traceback.
Loading always uses ``weights_only=True``: these files come from the internet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from .errors import CheckpointError
from .files import sha256_file
from .models import S3FD, SyncNetColor, SyncNetV2, Wav2Lip, Wav2LipDiscQual

MAX_LISTED = 3
"""How many offending keys an error message names before it only counts the rest."""


@dataclass(frozen=True)
class Network:
    """One of the five released networks: how to build it and how to recognise its state dict."""

    key: str  # registry name: wav2lip, s3fd, expert, syncnet_v2, disc_qual
    name: str  # as it appears in messages, with the released file's name
    build: Callable[[], nn.Module]
    signature: tuple[str, ...]  # key prefixes that identify this network's state dict


NETWORKS: dict[str, Network] = {net.key: net for net in (
    Network("wav2lip", "Wav2Lip generator (wav2lip.pth)", Wav2Lip, ("face_decoder_blocks.",)),
    Network("s3fd", "S3FD (s3fd.pth)", S3FD, ("conv1_1.", "fc7.")),
    Network("disc_qual", "Wav2Lip quality discriminator (visual_quality_disc.pth)", Wav2LipDiscQual, ("binary_pred.",)),
    Network("syncnet_v2", "SyncNet v2 (syncnet_v2.model)", SyncNetV2, ("netcnnlip.", "netcnnaud.", "netfclip.")),
    # last: the generator and the discriminator also have face_encoder / audio_encoder keys
    Network("expert", "lip-sync expert (lipsync_expert.pth)", SyncNetColor, ("face_encoder.", "audio_encoder.")),
)}
"""Every network this project loads; a file holding another one is named in the error.

Five released files are easy to mix up (the detector passed as the generator, the SyncNet of
syncnet_python passed as Wav2Lip's expert), so the guess covers all five whichever is loaded.
"""


def network(key: str) -> Network:
    try:
        return NETWORKS[key]
    except KeyError:
        raise ValueError(f"unknown network {key!r}; choose one of: {', '.join(NETWORKS)}") from None


def _article(name: str) -> str:
    return "an" if name[0].lower() in "aeiou" or name.startswith("S3FD") else "a"


def _reason(exc: BaseException) -> str:
    """The informative part of a torch.load exception, which is often long or empty."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    detail = lines[0].split(". ")[0].rstrip(".") if lines else ""
    if len(detail) > 120:
        detail = detail[:117] + "..."
    kind = type(exc).__name__
    return f"{kind}: {detail}" if detail else kind


def _load_file(path: Path) -> object:
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty (0 bytes); download it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    # torch.load on arbitrary bytes raises almost any exception type (UnpicklingError,
    # RuntimeError, EOFError, KeyError, IndexError, OSError, ...); all of them mean a bad file.
    except Exception as exc:
        reason = _reason(exc)
        if "Unsupported global" in reason:
            raise CheckpointError(
                f"{path}: holds pickled Python objects, not a state dict ({reason}); "
                "whole-model files are not supported, save model.state_dict() instead"
            ) from exc
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, truncated or corrupt? ({reason})"
        ) from exc


def _extract_state_dict(obj: object, path: Path, net: Network) -> dict[str, torch.Tensor]:
    """Unwraps a training checkpoint and strips DataParallel prefixes, as the original loader did."""
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: holds {_article(type(obj).__name__)} {type(obj).__name__}, "
            f"expected {_article(net.name)} {net.name} state dict"
        )
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {key!r} is {_article(type(value).__name__)} "
                f"{type(value).__name__}, expected a tensor in {_article(net.name)} "
                f"{net.name} state dict"
            )
    return {key.replace("module.", ""): value for key, value in obj.items()}


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    more = len(keys) - MAX_LISTED
    return f"{shown}, ... ({more} more)" if more > 0 else shown


def guess_network(keys: Mapping[str, object]) -> Network | None:
    """The released network whose state-dict keys these look like, or None."""
    for net in NETWORKS.values():
        if any(k.startswith(net.signature) for k in keys):
            return net
    return None


def _shape(shape: torch.Size) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _check_keys(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], path: Path, net: Network
) -> None:
    """Strict key and shape check up front, so the error names keys rather than tensors' sizes."""
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
    if other is not None and other is not net:
        head = (
            f"looks like {_article(other.name)} {other.name} checkpoint, "
            f"not {_article(net.name)} {net.name} one"
        )
    else:
        head = f"does not match the {net.name} network"
    raise CheckpointError(f"{path}: {head}: " + "; ".join(parts))


def read_state_dict(key: str, path: str | Path) -> dict[str, torch.Tensor]:
    """The validated, unprefixed state dict of network ``key``, for code that needs tensors, not a module.

    Accepts Wav2Lip's training checkpoints (``state_dict`` with ``module.`` keys plus optimizer
    extras, legacy or zip format) and bare state dicts. Raises :class:`CheckpointError`.
    """
    net = network(key)
    path = Path(path)
    state = _extract_state_dict(_load_file(path), path, net)
    with torch.device("meta"):
        expected = net.build().state_dict()
    _check_keys(state, expected, path, net)
    return {k: state[k] for k in expected}


def load_network(key: str, path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Network ``key`` with the file's weights, FP32, in eval mode; every file problem is one line."""
    state = read_state_dict(key, path)
    with torch.device("meta"):
        model = network(key).build()
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=torch.float32).eval()


def load_wav2lip(path: str | Path, device: str | torch.device = "cpu") -> Wav2Lip:
    """The generator (wav2lip.pth or wav2lip_gan.pth)."""
    return cast(Wav2Lip, load_network("wav2lip", path, device))


def load_s3fd(path: str | Path, device: str | torch.device = "cpu") -> S3FD:
    """The face detector."""
    return cast(S3FD, load_network("s3fd", path, device))


def load_disc_qual(path: str | Path, device: str | torch.device = "cpu") -> Wav2LipDiscQual:
    """The visual quality discriminator."""
    return cast(Wav2LipDiscQual, load_network("disc_qual", path, device))


def load_expert(path: str | Path, device: str | torch.device = "cpu") -> SyncNetColor:
    """The lip-sync expert (BatchNorm on running statistics, unlike Wav2Lip training)."""
    return cast(SyncNetColor, load_network("expert", path, device))


def load_syncnet_v2(path: str | Path, device: str | torch.device = "cpu") -> SyncNetV2:
    """syncnet_python's network for LSE-D / LSE-C."""
    return cast(SyncNetV2, load_network("syncnet_v2", path, device))


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed so 400 MiB checkpoints never sit in memory at once.

    Engine manifests record it so an engine built from other weights is refused.
    """
    path = Path(path)
    try:
        return sha256_file(path, chunk_size)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file") from None
