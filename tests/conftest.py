"""Shared fixtures: random-weight checkpoints in the released format and generated media."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def signals_as_at_a_terminal() -> None:
    """Tests Ctrl-C, hang up and stop the commands they start, and expect them handled as at a terminal.

    A test run started in the background of a script (SIGINT ignored) or under nohup (SIGHUP ignored)
    would hand those signals to its children ignored, and the commands rightly keep an ignored signal
    ignored (nohup's promise); so this run takes them back to their defaults, which children inherit.
    """
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGHUP, signal.SIGTERM):
        if signal.getsignal(sig) is signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The detection cache of every test (and of the CLI processes they start) lives in a temporary folder."""
    import os

    folder = tmp_path_factory.mktemp("xdg-cache")
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


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
