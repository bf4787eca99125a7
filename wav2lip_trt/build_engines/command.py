"""``wav2lip-trt build-engines``: parses options, calls :func:`build_engines`, prints a summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..cli_errors import setup_logging, user_errors
from ..cli_options import PROGRESS_OPTION
from ..cli_json import check_json_path, write_json
from ..files import check_output_dir

if TYPE_CHECKING:
    from .options import BuildOptions

FLAVOR_CHOICES = ("auto", "tensorrt", "tensorrt-rtx")  # kept in sync with builder.FLAVOR_CHOICES (tested)
DEFAULTS: dict[str, Any] = {
    "s3fd_batch": (1, 4, 8), "s3fd_min_size": "64x64", "s3fd_opt_size": "720x1280", "s3fd_max_size": "1920x1920",
    "wav2lip_batch": (1, 128, 128), "scoring_batch": (1, 64, 64),
}  # kept in sync with BuildOptions (tested); repeated so --help needs no torch import
POSITIVE = click.IntRange(min=1)


def _names(option: str) -> tuple[str, str]:
    """``--s3fd-min-batch`` and the original's snake_case spelling ``--s3fd_min_batch``."""
    return option, "--" + option[2:].replace("-", "_")


def options_from_params(params: dict[str, Any]) -> "BuildOptions":
    """The command's parsed parameters as :class:`BuildOptions` (sizes and targets parsed here)."""
    from . import BuildOptions, parse_compute_capabilities, parse_size

    return BuildOptions(
        checkpoint_path=params["checkpoint_path"],
        s3fd_checkpoint=params["s3fd_checkpoint"],
        expert_checkpoint=params["expert_checkpoint"],
        disc_checkpoint=params["disc_checkpoint"],
        syncnet_checkpoint=params["syncnet_checkpoint"],
        out=params["out"],
        precision=params["precision"],
        flavor=params["flavor"],
        s3fd_batch=(params["s3fd_min_batch"], params["s3fd_opt_batch"], params["s3fd_max_batch"]),
        s3fd_min_size=parse_size(params["s3fd_min_size"]),
        s3fd_opt_size=parse_size(params["s3fd_opt_size"]),
        s3fd_max_size=parse_size(params["s3fd_max_size"]),
        wav2lip_batch=(params["wav2lip_min_batch"], params["wav2lip_opt_batch"], params["wav2lip_max_batch"]),
        scoring_batch=(params["scoring_min_batch"], params["scoring_opt_batch"], params["scoring_max_batch"]),
        workspace_mib=params["workspace_mib"],
        compute_capabilities=parse_compute_capabilities(params["compute_capabilities"]),
        onnx_only=params["onnx_only"],
        force=params["force"],
    )


def check_outputs(params: dict[str, Any], json_path: Path | None) -> None:
    """--out is a folder this user can write (or create), --json a writable file; checked before any export."""
    inputs = {label: params[name] for name, label in (
        ("checkpoint_path", "--checkpoint_path"), ("s3fd_checkpoint", "--s3fd-checkpoint"),
        ("expert_checkpoint", "--expert-checkpoint"), ("disc_checkpoint", "--disc-checkpoint"),
        ("syncnet_checkpoint", "--syncnet-checkpoint"))}
    check_output_dir(params["out"], "--out", inputs)
    check_json_path(json_path, inputs, {"--out": params["out"]})


@click.command("build-engines")
@click.option(*_names("--checkpoint-path"), "checkpoint_path", type=click.Path(path_type=Path),
              help="Wav2Lip checkpoint (wav2lip.pth or wav2lip_gan.pth) to build the generator engine from.")
@click.option(*_names("--s3fd-checkpoint"), "s3fd_checkpoint", type=click.Path(path_type=Path),
              help="S3FD checkpoint (s3fd.pth) to build the detector engine from.")
@click.option(*_names("--expert-checkpoint"), "expert_checkpoint", type=click.Path(path_type=Path),
              help="Lip-sync expert (lipsync_expert.pth): engines expert_audio and expert_face, for --score.")
@click.option(*_names("--disc-checkpoint"), "disc_checkpoint", type=click.Path(path_type=Path),
              help="Quality discriminator (visual_quality_disc.pth): engine disc_qual, for --score.")
@click.option(*_names("--syncnet-checkpoint"), "syncnet_checkpoint", type=click.Path(path_type=Path),
              help="syncnet_python's syncnet_v2.model: engines syncnet_lip and syncnet_audio, for the score command.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("engines"), show_default=True,
              help="Directory for ONNX files, engines, manifests and the timing cache.")
@click.option("--precision", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
              help="fp16: FP16 network (S3FD's L2Norm in FP32) with FP32 inputs/outputs.")
@click.option("--flavor", "--flavour", "flavor", type=click.Choice(FLAVOR_CHOICES), default="auto", show_default=True,
              help="auto: TensorRT when installed, else TensorRT-RTX.")
@click.option(*_names("--s3fd-min-batch"), "s3fd_min_batch", type=POSITIVE, metavar="N", default=DEFAULTS["s3fd_batch"][0],
              show_default=True, help="S3FD profile: smallest batch of frames.")
@click.option(*_names("--s3fd-opt-batch"), "s3fd_opt_batch", type=POSITIVE, metavar="N", default=DEFAULTS["s3fd_batch"][1],
              show_default=True, help="S3FD profile: batch to optimise for.")
@click.option(*_names("--s3fd-max-batch"), "s3fd_max_batch", type=POSITIVE, metavar="N", default=DEFAULTS["s3fd_batch"][2],
              show_default=True, help="S3FD profile: largest batch.")
@click.option(*_names("--s3fd-min-size"), "s3fd_min_size", default=DEFAULTS["s3fd_min_size"], metavar="HxW",
              show_default=True, help="S3FD profile: smallest frame, height x width.")
@click.option(*_names("--s3fd-opt-size"), "s3fd_opt_size", default=DEFAULTS["s3fd_opt_size"], metavar="HxW",
              show_default=True, help="S3FD profile: frame size to optimise for.")
@click.option(*_names("--s3fd-max-size"), "s3fd_max_size", default=DEFAULTS["s3fd_max_size"], metavar="HxW",
              show_default=True, help="S3FD profile: largest frame.")
@click.option(*_names("--wav2lip-min-batch"), "wav2lip_min_batch", type=POSITIVE, metavar="N", default=DEFAULTS["wav2lip_batch"][0],
              show_default=True, help="Wav2Lip profile: smallest batch of faces.")
@click.option(*_names("--wav2lip-opt-batch"), "wav2lip_opt_batch", type=POSITIVE, metavar="N", default=DEFAULTS["wav2lip_batch"][1],
              show_default=True, help="Wav2Lip profile: batch to optimise for.")
@click.option(*_names("--wav2lip-max-batch"), "wav2lip_max_batch", type=POSITIVE, metavar="N", default=DEFAULTS["wav2lip_batch"][2],
              show_default=True, help="Wav2Lip profile: largest batch (--wav2lip_batch_size at inference).")
@click.option(*_names("--scoring-min-batch"), "scoring_min_batch", type=POSITIVE, metavar="N",
              default=DEFAULTS["scoring_batch"][0], show_default=True, help="Scoring engines: smallest batch.")
@click.option(*_names("--scoring-opt-batch"), "scoring_opt_batch", type=POSITIVE, metavar="N",
              default=DEFAULTS["scoring_batch"][1], show_default=True, help="Scoring engines: batch to optimise for.")
@click.option(*_names("--scoring-max-batch"), "scoring_max_batch", type=POSITIVE, metavar="N",
              default=DEFAULTS["scoring_batch"][2], show_default=True,
              help="Scoring engines: largest batch (larger calls run in slices).")
@click.option("--workspace", "workspace_mib", type=POSITIVE, metavar="MIB",
              help="Builder workspace limit in MiB [TensorRT's default: the GPU's memory].")
@click.option(*_names("--compute-capabilities"), "compute_capabilities", default="portable", show_default=True,
              metavar="LIST", help="TensorRT-RTX targets, e.g. sm75,sm86,sm89,sm120 or current "
              "(portable: Ampere and later RTX GPUs). Hopper (H100/H200) needs --flavor tensorrt.")
@click.option(*_names("--onnx-only"), "onnx_only", is_flag=True, help="Export the ONNX files only (no TensorRT needed).")
@click.option("--force", is_flag=True, help="Rebuild even when the engines are up to date.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write a JSON report here ('-' = stdout).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or info messages.")
@PROGRESS_OPTION
@user_errors(interrupted="engines finished before it were kept, nothing half-written was left")
def build_engines_command(quiet: bool, progress: str, json_path: Path | None, **kwargs: Any) -> None:
    """Export S3FD, Wav2Lip and the scoring networks to ONNX and build TensorRT engines (skipped when up to date)."""
    from . import build_engines

    setup_logging(quiet, progress)
    check_outputs(kwargs, json_path)
    report = build_engines(options_from_params(kwargs), show_progress=not quiet)
    if json_path is not None:
        write_json(json_path, report.to_json())
    if not quiet:
        for r in report.results:
            artifact = r.engine if r.engine is not None else r.onnx
            size = r.engine_bytes if r.engine_bytes is not None else r.onnx_bytes
            status = "up to date" if r.skipped else f"built ({r.reason})"
            seconds = r.export_seconds + r.build_seconds
            click.echo(f"{r.model} {r.precision}: {artifact} {status}, {size / 1e6:.1f} MB"
                       + ("" if r.skipped else f", {seconds:.1f} s"), err=True)
