"""Command-line options that several commands share (infer, detect, batch), defined once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .encode import X264_PRESETS
from .options import BACKEND_CHOICES, DEVICES, PRECISION_CHOICES
from .progress import MODES as PROGRESS_MODES


def with_options(*options: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Apply click options in the order given (the order ``--help`` lists them)."""

    def decorate(func: Any) -> Any:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


RUNNER_OPTIONS = (
    click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                 help="Where to run: auto = CUDA if torch sees a GPU, else the CPU."),
    click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="torch", show_default=True,
                 help="Where the networks run; auto = TensorRT engines if usable, else torch (FP16 on CUDA)."),
    click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="auto", show_default=True,
                 help="auto = FP16 for engines and CUDA, FP32 on CPU."),
    click.option("--engines", "--engines-dir", "engines_dir", type=click.Path(path_type=Path), default=Path("engines"),
                 show_default=True, help="Folder with engines from build-engines (tensorrt backend)."),
    click.option("--flavor", "--flavour", "flavor", type=click.Choice(("auto", "tensorrt", "tensorrt-rtx")),
                 default="auto", show_default=True, help="TensorRT flavour for the tensorrt backend."),
)

FRAME_OPTIONS = (
    click.option("--resize_factor", "--resize-factor", "resize_factor", type=int, default=1, show_default=True,
                 help="Shrink video frames by this factor first."),
    click.option("--crop", nargs=4, type=int, default=(0, -1, 0, -1), show_default=True,
                 help="Crop video frames: top bottom left right (-1 = full size)."),
    click.option("--rotate", is_flag=True, help="Rotate video frames 90 degrees clockwise."),
)

DETECTION_OPTIONS = (
    click.option("--face_det_batch_size", "--face-det-batch-size", "face_det_batch_size", type=int, default=16,
                 show_default=True, help="Frames per S3FD face-detection batch (part of the detection cache key)."),
    click.option("--detect-every", "detect_every", type=int, default=1, show_default=True, metavar="K",
                 help="S3FD on every K-th frame (and the last); boxes in between interpolated."),
    click.option("--detect-size", "detect_size", type=int, metavar="N",
                 help="S3FD on frames scaled down to N px on the longer side; boxes mapped back. [off]"),
    click.option("--cache-dir", "cache_dir", type=click.Path(path_type=Path),
                 help="Detection cache folder [$XDG_CACHE_HOME/wav2lip-trt, else ~/.cache/wav2lip-trt]."),
    click.option("--no-cache", "no_cache", is_flag=True, help="Neither read nor write the detection cache."),
)

def preset_option(default: str = "medium", why: str = "") -> Callable[[Any], Any]:
    """``--preset``: one definition; a command whose output is live may default to a faster preset."""
    return click.option(
        "--preset", type=click.Choice(X264_PRESETS), default=default, show_default=True,
        help=f"libx264 preset{why}: faster ones encode more frames per second into larger files at the same --crf "
             "(1080p, one core: medium ~15 fps, veryfast ~28-46, ultrafast ~86-114).")


PRESET_OPTION = preset_option()

PROGRESS_OPTION = click.option(
    "--progress", type=click.Choice(PROGRESS_MODES), default="auto", show_default=True,
    help="Progress bars: auto = on a terminal, plain lines elsewhere; off = plain lines (a step's start, its count "
    "every 10 s, its end), on = bars even into a file.")
