"""Which H.264 encoder the output ffmpeg runs: libx264 (everywhere) or NVENC (where it really works).

An ffmpeg that lists ``h264_nvenc`` only says it was built with NVENC support; the GPU may have no
encoder (H100 and H200 have none), the driver may be too old, or there may be no GPU at all. So
``auto`` picks NVENC only after a one-frame trial encode succeeds, and remembers the answer per
ffmpeg executable for the rest of the process.

libx264 needs no thread option: ffmpeg leaves x264's ``threads`` at auto, which is 1.5 x the
logical cores with frame threading (the stream's x264 SEI reads ``threads=3`` on a 2-core machine).
"""

from __future__ import annotations

import functools
import subprocess
from typing import Literal

from .errors import InputError

EncoderChoice = Literal["auto", "libx264", "h264_nvenc"]
ENCODERS = ("auto", "libx264", "h264_nvenc")
TRIAL_TIMEOUT_S = 30.0  # a first NVENC session can take a few seconds while the driver loads


@functools.lru_cache(maxsize=None)
def ffmpeg_encoders(ffmpeg: str) -> frozenset[str]:
    """Names of the video encoders ``ffmpeg -encoders`` lists (empty when it cannot be run)."""
    try:
        proc = subprocess.run(
            [ffmpeg, "-hide_banner", "-nostdin", "-encoders"],
            capture_output=True, text=True, timeout=TRIAL_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    names = set()
    for line in proc.stdout.splitlines():
        parts = line.split()
        # rows look like " V....D libx264   libx264 H.264 / AVC ..."; the legend rows use "=" instead
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] == "V" and parts[1] != "=":
            names.add(parts[1])
    return frozenset(names)


@functools.lru_cache(maxsize=None)
def encoder_works(ffmpeg: str, encoder: str) -> bool:
    """True when ``ffmpeg`` encodes one small frame with ``encoder`` without an error."""
    cmd = [
        ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error",
        "-f", "lavfi", "-i", "color=c=gray:s=256x256:r=25:d=0.04",
        "-frames:v", "1", "-pix_fmt", "yuv420p", "-c:v", encoder, "-f", "null", "-",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=TRIAL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def choose_encoder(requested: str, ffmpeg: str) -> str:
    """The ffmpeg encoder name for ``--encoder requested``: ``auto`` falls back to libx264.

    An explicit ``h264_nvenc`` is checked up front as well, so a GPU without NVENC fails before
    any frame is decoded rather than when the first frame reaches ffmpeg.
    """
    if requested not in ENCODERS:
        raise InputError(f"unknown encoder {requested!r}; choose one of {', '.join(ENCODERS)}")
    if requested == "auto":
        if _cuda_visible() and "h264_nvenc" in ffmpeg_encoders(ffmpeg) and encoder_works(ffmpeg, "h264_nvenc"):
            return "h264_nvenc"
        return "libx264"
    if requested not in ffmpeg_encoders(ffmpeg):
        raise InputError(
            f"{ffmpeg} has no {requested} encoder; use --encoder auto, or pass --ffmpeg with a build that has it"
        )
    if requested == "h264_nvenc" and not encoder_works(ffmpeg, requested):
        raise InputError(
            f"h264_nvenc is listed by {ffmpeg} but a trial encode failed (no NVENC on this GPU, no GPU, "
            "or an old driver; H100/H200 have no NVENC); use --encoder libx264 or auto"
        )
    return requested
