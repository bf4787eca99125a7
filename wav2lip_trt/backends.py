"""Backend registry: a name maps to a function that builds the detector and generator runners."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError
from .runners.base import S3FD_INPUTS, S3FD_OUTPUTS, WAV2LIP_INPUTS, WAV2LIP_OUTPUTS, Runner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerRequest:
    """What a backend needs to build its runners."""

    checkpoint_path: Path
    s3fd_checkpoint: Path | None  # None = no detection needed (--box given)
    device: torch.device


@dataclass
class Runners:
    detector: Runner | None
    generator: Runner


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when torch sees a GPU; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA GPU (use --device cpu or auto)")
    return torch.device(name)


def _torch_runners(request: RunnerRequest) -> Runners:
    from .checkpoints import load_s3fd, load_wav2lip
    from .runners.torch_runner import TorchRunner

    generator = TorchRunner(
        load_wav2lip(request.checkpoint_path), WAV2LIP_INPUTS, WAV2LIP_OUTPUTS, name="torch", device=request.device
    )
    detector = None
    if request.s3fd_checkpoint is not None:
        detector = TorchRunner(
            load_s3fd(request.s3fd_checkpoint), S3FD_INPUTS, S3FD_OUTPUTS, name="torch", device=request.device
        )
    return Runners(detector, generator)


BACKENDS: dict[str, Callable[[RunnerRequest], Runners]] = {"torch": _torch_runners}


def create_runners(backend: str, request: RunnerRequest) -> Runners:
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise InputError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}") from None
    return factory(request)
