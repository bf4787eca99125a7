"""Locating the ffmpeg executable.

The pip-only default is the static build shipped by ``imageio-ffmpeg``; a user can point to
another one with ``--ffmpeg`` or the ``WAV2LIP_TRT_FFMPEG`` environment variable.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import MissingDependencyError

ENV_VAR = "WAV2LIP_TRT_FFMPEG"


def find_ffmpeg(explicit: str | os.PathLike[str] | None = None) -> str:
    """Return the ffmpeg to run: explicit path, then $WAV2LIP_TRT_FFMPEG, then imageio-ffmpeg's."""
    for candidate in (explicit, os.environ.get(ENV_VAR)):
        if candidate:
            resolved = shutil.which(str(candidate))
            if resolved is None or not Path(resolved).is_file():
                raise MissingDependencyError(f"ffmpeg not found at {candidate}")
            return resolved
    try:
        import imageio_ffmpeg
    except ImportError:
        imageio_ffmpeg = None
    if imageio_ffmpeg is not None:
        try:
            return imageio_ffmpeg.get_ffmpeg_exe()
        except RuntimeError:
            pass
    system = shutil.which("ffmpeg")
    if system:
        return system
    raise MissingDependencyError(
        "no ffmpeg found: pip install imageio-ffmpeg, or pass --ffmpeg /path/to/ffmpeg"
    )
