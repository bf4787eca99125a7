"""``wav2lip-trt score``: LSE-D / LSE-C of a video (and the expert's and discriminator's numbers).

Parses options into :class:`ScoreOptions`, calls :func:`score_video`, prints a table and writes
``--json``. Heavy imports (torch, the models) happen only when the command runs, so ``--help``
stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..cli_errors import setup_logging, user_errors
from ..cli_options import RUNNER_OPTIONS, with_options
from ..cli_json import check_json_path, to_stdout, write_json

if TYPE_CHECKING:
    from .score import ScoreReport

POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def format_table(report: "ScoreReport") -> str:
    """One row per crop clip or face track: LSE, framewise confidence, then the expert's numbers."""
    expert = any(c.expert is not None for c in report.clips)
    quality = any(c.visual_quality is not None for c in report.clips)
    head = f"{'clip':<6} {'frames':>11} {'windows':>7} {'offset':>6} {'LSE-D':>8} {'LSE-C':>7} {'conf min/mean':>14}"
    if expert:
        head += f" {'expert sim':>10} {'sync loss':>9} {'exp. offset':>11}"
    if quality:
        head += f" {'quality':>7}"
    lines = [head]
    for number, clip in enumerate(report.clips):
        fconf = clip.lse.framewise_confidence
        name = "crop" if report.crops else f"{number}"
        row = (f"{name:<6} {f'{clip.start_frame}-{clip.end_frame}':>11} {clip.lse.windows:>7} "
               f"{clip.lse.av_offset:>6} {clip.lse.min_dist:>8.3f} {clip.lse.confidence:>7.3f} "
               f"{f'{fconf.min():.2f}/{fconf.mean():.2f}':>14}")
        if expert:
            e = clip.expert
            row += (f" {_fmt(_mean(e.similarity) if e else None):>10} {_fmt(e.sync_loss if e else None):>9}"
                    f" {('-' if e is None or e.av_offset is None else str(e.av_offset)):>11}")
        if quality:
            q = clip.visual_quality
            row += f" {_fmt(q.mean if q else None):>7}"
        lines.append(row)
    if not report.crops:
        mean = report.mean_lse()
        lines.append(f"mean over {len(report.clips)} track(s): LSE-D {mean['min_dist']:.3f}  "
                     f"LSE-C {mean['confidence']:.3f}")
    return "\n".join(lines)


@click.command("score")
@click.option("--video", required=True, type=click.Path(path_type=Path),
              help="Video to score (a lip-sync output, a recording, a face-crop clip with --crops).")
@click.option("--audio", type=click.Path(path_type=Path), help="Score against this audio instead of the video's own track.")
@click.option("--syncnet-checkpoint", "--syncnet_checkpoint", "syncnet_checkpoint", type=click.Path(path_type=Path),
              default=Path("checkpoints/syncnet_v2.model"), show_default=True,
              help="syncnet_python's syncnet_v2.model (LSE-D / LSE-C).")
@click.option("--expert-checkpoint", "--expert_checkpoint", "expert_checkpoint", type=click.Path(path_type=Path),
              help="Also score with Wav2Lip's lip-sync expert (lipsync_expert.pth).")
@click.option("--disc-checkpoint", "--disc_checkpoint", "disc_checkpoint", type=click.Path(path_type=Path),
              help="Also score visual quality with Wav2Lip's quality discriminator.")
@click.option("--crops", is_flag=True,
              help="The video already is a face crop: score it as is, exactly as the Wav2Lip authors' LSE script.")
@click.option("--s3fd-checkpoint", "--s3fd_checkpoint", "s3fd_checkpoint", type=click.Path(path_type=Path),
              default=Path("checkpoints/s3fd.pth"), show_default=True, help="Face detector for face tracks (without --crops).")
@click.option("--batch-size", "batch_size", type=POSITIVE, default=20, show_default=True, help="LSE windows per forward.")
@click.option("--vshift", type=POSITIVE, default=15, show_default=True, help="Audio-video shift searched, in frames either way.")
@click.option("--min-track", "min_track", type=NON_NEGATIVE, default=100, show_default=True,
              help="A face track needs more frames than this.")
@click.option("--min-face-size", "min_face_size", type=click.FloatRange(min=0), default=100.0, show_default=True,
              help="A face track's mean box side must exceed this many pixels.")
@click.option("--num-failed-det", "num_failed_det", type=NON_NEGATIVE, default=25, show_default=True,
              help="Frames a track may go without a detection.")
@click.option("--facedet-scale", "facedet_scale", type=click.FloatRange(min=0, min_open=True, max=4), default=0.25,
              show_default=True, help="Frames are shrunk by this factor for face detection.")
@click.option("--crop-scale", "crop_scale", type=click.FloatRange(min=0), default=0.4, show_default=True,
              help="Margin of the 224x224 crop around the face box.")
@click.option("--detect-batch-size", "detect_batch_size", type=POSITIVE, default=16, show_default=True,
              help="Frames per S3FD forward.")
@with_options(*RUNNER_OPTIONS)
@click.option("--ffmpeg", type=str, help="ffmpeg executable to use [imageio-ffmpeg's].")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the JSON report here ('-' = stdout).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors (and the JSON of --json -).")
@user_errors
def score_command(quiet: bool, json_path: Path | None, **params: Any) -> None:
    """Score lip sync (LSE-D, LSE-C, AV offset) and, optionally, the expert's sync and visual quality."""
    from .score import ScoreOptions, score_video
    from .tracking import TrackOptions

    setup_logging(quiet)
    check_json_path(json_path, {label: params[name] for label, name in (
        ("--video", "video"), ("--audio", "audio"), ("--syncnet-checkpoint", "syncnet_checkpoint"),
        ("--expert-checkpoint", "expert_checkpoint"), ("--disc-checkpoint", "disc_checkpoint"),
        ("--s3fd-checkpoint", "s3fd_checkpoint"))})
    tracking = TrackOptions(facedet_scale=params.pop("facedet_scale"), min_track=params.pop("min_track"),
                            num_failed_det=params.pop("num_failed_det"), min_face_size=params.pop("min_face_size"),
                            crop_scale=params.pop("crop_scale"))
    report = score_video(ScoreOptions(tracking=tracking, **params))
    if json_path is not None:
        write_json(json_path, report.to_json())
    if not quiet and not to_stdout(json_path):
        click.echo(format_table(report))
