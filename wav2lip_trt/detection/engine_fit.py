"""Frames that fit the S3FD engine: a TensorRT engine takes frames only up to its profile's size.

``build-engines`` gives S3FD a profile of at most 1920 x 1920 by default (1080p in either
orientation). A 4K video would be refused by TensorRT at its first detection batch, after the
models loaded. So before anything loads, a run that will use the S3FD engine reads the engine's
manifest: when the frames S3FD would see do not fit, a run without ``--detect-size`` detects on
frames scaled down to the largest size that fits (and says so); a ``--detect-size`` that does not
fit is one error naming the size that would.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from .scaled import detect_scale

if TYPE_CHECKING:
    from ..options import InferenceOptions

log = logging.getLogger(__name__)


def s3fd_engine_limit(engines_dir: str | Path, precision: str) -> tuple[Path, int, int] | None:
    """(engine, most rows, most columns) of the S3FD engine's input profile, from its manifest; None without one."""
    from ..build_engines.manifest import artifact_paths, read_manifest
    from ..runners.base import S3FD_INPUTS

    paths = artifact_paths(engines_dir, "s3fd", precision)
    manifest = read_manifest(paths.engine_manifest) if paths.engine.is_file() else None
    if manifest is None:
        return None
    for tensor in manifest.get("inputs", []):
        profile = tensor.get("profile") or {}
        if tensor.get("name") == S3FD_INPUTS[0] and len(profile.get("max", [])) == 4:
            _, _, rows, columns = profile["max"]
            return paths.engine, int(rows), int(columns)
    return None


def _scaled(width: int, height: int, size: int | None) -> tuple[int, int]:
    scale = detect_scale(width, height, size)
    return (width, height) if scale is None else (scale[0], scale[1])


def largest_fitting_size(width: int, height: int, rows: int, columns: int) -> int | None:
    """The largest ``--detect-size`` whose scaled frames fit ``rows`` x ``columns``; None if none does."""
    landscape = width >= height
    longer, shorter = max(width, height), min(width, height)
    bound_longer, bound_shorter = (columns, rows) if landscape else (rows, columns)
    size = min(longer, bound_longer, (bound_shorter * longer) // shorter + 1)
    while size > 0:
        try:
            w, h = _scaled(width, height, size)
        except InputError:  # the shorter side would fall below what S3FD takes
            return None
        if w <= columns and h <= rows:
            return size
        size -= 1
    return None


def fit_detect_size(width: int, height: int, detect_size: int | None, limit: tuple[Path, int, int]) -> int | None:
    """The ``--detect-size`` to run with for ``width`` x ``height`` frames and an engine taking ``limit``."""
    engine, rows, columns = limit
    w, h = _scaled(width, height, detect_size)
    if w <= columns and h <= rows:
        return detect_size
    fits = largest_fitting_size(width, height, rows, columns)
    rebuild = f"rebuild it with build-engines --s3fd-max-size {max(h, rows)}x{max(w, columns)}"
    if detect_size is not None or fits is None:
        what = f"--detect-size {detect_size} gives S3FD" if detect_size is not None else "S3FD would get"
        use = f"use --detect-size {fits} or less, or {rebuild}" if fits is not None else rebuild
        raise InputError(f"{what} {w}x{h} frames, larger than the S3FD engine {engine} takes (at most "
                         f"{columns}x{rows}); {use}")
    log.warning("the S3FD engine %s takes frames up to %dx%d: detecting faces on the %dx%d frames scaled to %d px "
                "on the longer side (--detect-size %d); give --detect-size to choose, or %s",
                engine, columns, rows, width, height, fits, fits, rebuild)
    return fits


def fit_to_engine(options: InferenceOptions, width: int, height: int) -> InferenceOptions:
    """``options`` with a ``detect_size`` that S3FD's engine takes, for ``width`` x ``height`` frames.

    Only where the run will load the S3FD engine: ``--backend tensorrt``, or ``auto`` on a CUDA
    device when the engine is there. Other runs, and runs without S3FD, are returned unchanged.
    """
    if not options.needs_detector or options.backend not in ("tensorrt", "auto"):
        return options
    if options.backend == "auto":
        from ..backends import resolve_device

        if resolve_device(options.device).type != "cuda":
            return options
    precision = "fp16" if options.precision == "auto" else options.precision  # what the engine backends load
    limit = s3fd_engine_limit(options.engines_dir, precision)
    if limit is None:
        return options  # no engine (or no manifest): the runner says what to build
    size = fit_detect_size(width, height, options.detect_size, limit)
    return options if size == options.detect_size else replace(options, detect_size=size)
