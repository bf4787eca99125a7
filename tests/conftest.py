"""Shared fixtures: random-weight checkpoints in the released format and generated media."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(wav2lip.pth, s3fd.pth) with random weights, written exactly like the released files."""
    from wav2lip_trt.random_weights import write_random_checkpoints

    return write_random_checkpoints(tmp_path_factory.mktemp("checkpoints"), seed=0)


@pytest.fixture(scope="session")
def talking_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(face.mp4 160x128 at 25 fps, 2 s; speech.wav 16 kHz mono, 2 s)."""
    from wav2lip_trt.samples import write_talking_clip

    return write_talking_clip(tmp_path_factory.mktemp("clip"), seconds=2.0, fps=25.0, width=160, height=128)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run only where torch sees a CUDA GPU; elsewhere they skip with the reason."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
