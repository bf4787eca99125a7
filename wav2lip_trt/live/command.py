"""``wav2lip-trt avatar`` (prepare a face once) and ``wav2lip-trt stream`` (lip-sync audio as it arrives)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import click

from ..cli_errors import setup_logging, user_errors
from ..cli_options import DETECTION_OPTIONS, FRAME_OPTIONS, RUNNER_OPTIONS, preset_option, with_options
from ..options import ON_MISSING_FACE
from .avatar import LOOPS
from .sources import FORMATS
from .sinks import STDOUT_FORMATS
from .stream import CLOCKS, POLICIES

log = logging.getLogger(__name__)

CHECKPOINT_OPTION = click.option(
    "--checkpoint_path", "--checkpoint-path", "checkpoint_path", required=True, type=click.Path(path_type=Path),
    help="Wav2Lip checkpoint (wav2lip.pth or wav2lip_gan.pth); an avatar is tied to the one it was made with.")


@click.command("avatar")
@click.argument("face", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Avatar folder to write.")
@CHECKPOINT_OPTION
@click.option("--loop", type=click.Choice(LOOPS), default="forward", show_default=True,
              help="How frames repeat when the audio outlasts them: forward (the original's i % n) or pingpong "
                   "(forwards then backwards: no jump at the loop point).")
@click.option("--static", is_flag=True, help="Use only the first frame.")
@click.option("--fps", type=float, default=25.0, show_default=True, help="Frame rate for an image or a frames folder.")
@click.option("--pads", nargs=4, type=int, default=(0, 10, 0, 0), show_default=True, help="Box padding: top bottom left right.")
@with_options(*DETECTION_OPTIONS)
@with_options(*FRAME_OPTIONS)
@click.option("--box", nargs=4, type=int, default=(-1, -1, -1, -1), show_default=True,
              help="Fixed face box y1 y2 x1 x2 instead of detection.")
@click.option("--boxes", type=click.Path(path_type=Path), help="Per-frame face boxes (JSON from `detect --json`).")
@click.option("--nosmooth", is_flag=True, help="Do not smooth detected boxes over time.")
@click.option("--on-missing-face", "--on_missing_face", "on_missing_face", type=click.Choice(ON_MISSING_FACE),
              default="error", show_default=True, help="Frame without a face: fail, pass it through, or reuse the last box.")
@click.option("--s3fd-checkpoint", "--s3fd_checkpoint", "s3fd_checkpoint", type=click.Path(path_type=Path),
              default=Path("checkpoints/s3fd.pth"), show_default=True, help="S3FD face detector weights.")
@with_options(*RUNNER_OPTIONS)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@user_errors
def avatar_command(face: Path, out: Path, checkpoint_path: Path, loop: str, quiet: bool, s3fd_checkpoint: Path,
                   device: str, backend: str, precision: str, engines_dir: Path, flavor: str, **face_options: Any) -> None:
    """Prepare FACE (video, image or frames folder) for `stream`: boxes, face crops and frames, stored in --out."""
    from ..session import Session

    setup_logging(quiet)
    started = time.perf_counter()
    needs_detector = face_options["box"][0] == -1 and face_options["boxes"] is None
    with Session(checkpoint_path, s3fd_checkpoint if needs_detector else None, device=device, backend=backend,
                 precision=precision, engines_dir=engines_dir, flavor=flavor) as session:
        avatar = session.avatar(face, out, loop=loop, **face_options)
    if not quiet:
        size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
        click.echo(f"Wrote avatar {out}: {avatar.frames.shape[0]} frames, {len(avatar)} loop positions ({loop}), "
                   f"{avatar.width}x{avatar.height} at {avatar.fps:g} fps, boxes: {avatar.manifest['detection']}, "
                   f"{size:.1f} MiB, in {time.perf_counter() - started:.1f} s", err=True)


@click.command("stream")
@click.option("--avatar", "avatar_dir", required=True, type=click.Path(path_type=Path), help="Folder from `wav2lip-trt avatar`.")
@click.option("--audio", required=True, type=str, help="Audio file, or - for raw PCM on stdin.")
@click.option("--outfile", required=True, type=str,
              help="Video file (H.264 + the audio, written when complete), or - for stdout (see --stdout-format).")
@CHECKPOINT_OPTION
@with_options(*RUNNER_OPTIONS)
@click.option("--format", "sample_format", type=click.Choice(tuple(FORMATS)), default="s16le", show_default=True,
              help="stdin: sample format of the raw PCM.")
@click.option("--rate", type=int, default=16000, show_default=True, help="stdin: sample rate (resampled to 16 kHz).")
@click.option("--channels", type=int, default=1, show_default=True, help="stdin: interleaved channels (averaged).")
@click.option("--realtime", is_flag=True, help="Audio file: feed it at real time (as a live source would), not at once.")
@click.option("--chunk-ms", "chunk_ms", type=float, default=200.0, show_default=True,
              help="Audio file: chunk size fed at a time.")
@click.option("--idle-timeout", "idle_timeout", type=float, default=10.0, show_default=True, metavar="SECONDS",
              help="stdin: end the stream when no audio arrives for this long (0 = wait for ever).")
@click.option("--clock", type=click.Choice(CLOCKS), default="audio", show_default=True,
              help="audio: a frame per window of audio received (exact); wall: frames at the video rate, "
                   "late audio replaced by silence (reported as gaps).")
@click.option("--delay", type=float, default=0.8, show_default=True, metavar="SECONDS",
              help="wall clock: frame i is due this long after the stream starts plus i / fps (cover 0.25 s of "
                   "look-ahead, the source's chunk length and a generator batch).")
@click.option("--policy", type=click.Choice(POLICIES), default="block", show_default=True,
              help="A slow consumer: block the audio source (back-pressure), or drop the oldest frames (counted).")
@click.option("--queue-frames", "queue_frames", type=int, default=32, show_default=True,
              help="Finished frames held for the writer.")
@click.option("--max-batch", "max_batch", type=int, default=16, show_default=True,
              help="Most frames per generator batch (batches are smaller when the stream has caught up).")
@click.option("--wav2lip_batch_size", "--wav2lip-batch-size", "wav2lip_batch_size", type=int, default=128,
              show_default=True, help="The batch infer would use (only its one-frame last batch matters, for exactness).")
@click.option("--blend", type=click.Choice(("none", "feather")), default="none", show_default=True,
              help="Paste-back: the original's hard box, or feathered edges.")
@click.option("--stdout-format", "stdout_format", type=click.Choice(STDOUT_FORMATS), default="ts", show_default=True,
              help="--outfile -: H.264 in MPEG-TS, or raw BGR frames.")
@click.option("--save-frames", "--save_frames", "save_frames", type=click.Path(path_type=Path),
              help="Also write the output frames as PNG images to this folder.")
@click.option("--ffmpeg", type=str, help="ffmpeg executable to use [imageio-ffmpeg's].")
@click.option("--crf", type=int, default=18, show_default=True, help="H.264 quality (lower is better).")
@preset_option("veryfast", " of a file output (a live stream wants a fast one)")
@click.option("--encoder", type=click.Choice(("auto", "libx264", "h264_nvenc")), default="auto", show_default=True,
              help="H.264 encoder of a file output.")
@click.option("--expert-checkpoint", "expert_checkpoint", type=click.Path(path_type=Path),
              help="Score the streamed faces with the lip-sync expert (lipsync_expert.pth), as infer --score does.")
@click.option("--disc-checkpoint", "disc_checkpoint", type=click.Path(path_type=Path),
              help="Score them with the visual quality discriminator too.")
@click.option("--score-every", "score_every", type=int, default=1, show_default=True, metavar="K",
              help="Score the windows and faces that start at every K-th frame only.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write a JSON report here ('-' = stdout).")
@user_errors(interrupted="no output file was written (frames already piped to stdout stay sent)")
def stream_command(**kw: Any) -> None:
    """Lip-sync audio to a prepared avatar as it arrives: frames out as soon as their audio is final."""
    from .runner import run_stream_command

    run_stream_command(**kw)

