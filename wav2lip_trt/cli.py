"""``wav2lip-trt`` command line: parses, validates, calls the library, prints errors as one line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .build_engines.command import build_engines_command
from .detection.command import detect_command
from .scoring.command import score_command
from .jobs.command import batch_command
from .live.command import avatar_command, stream_command
from .serve.command import serve_command
from .cli_errors import install_signal_handlers, interrupted_exit, kept_and_lost, setup_logging, user_errors
from .cli_options import DETECTION_OPTIONS, FRAME_OPTIONS, PRESET_OPTION, PROGRESS_OPTION, RUNNER_OPTIONS, with_options
from .errors import InputError
from .cli_json import check_json_path, to_stdout, write_json
from .files import check_output_dir
from .options import DEVICES, ON_MISSING_FACE, PRECISION_CHOICES, InferenceOptions

TRUE_WORDS = {"true", "1", "yes", "y", "on"}
FALSE_WORDS = {"false", "0", "no", "n", "off"}


def parse_bool(ctx: click.Context, param: click.Parameter, value: str | bool | None) -> bool:
    """``--static``, ``--static True`` and ``--static False`` (which, unlike the original, means false)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise click.BadParameter(f"expected true or false, got {value!r}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wav2lip-trt")
def cli() -> None:
    """Wav2Lip lip-sync with S3FD face detection: reference-exact PyTorch, FP16 TensorRT engines."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point: usage mistakes, like user errors, are one ``Error:`` line and exit 1.

    SIGINT, SIGTERM and SIGHUP unwind the stack (see :mod:`wav2lip_trt.cli_errors`), so an
    interrupted run stops ffmpeg, removes its temporary file and exits with 128 + the signal number.
    """
    # OpenCV's FFmpeg backend prints demuxer noise ("moov atom not found") before our own message.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    install_signal_handlers()
    try:
        cli.main(args=argv, prog_name="wav2lip-trt", standalone_mode=False)
    except click.exceptions.Abort as exc:  # an interrupt outside a command's own handling
        interrupted_exit(exc.__cause__ or exc.__context__)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        interrupted_exit(exc)


def _one_of(names: dict[str, Any], what: str) -> Any:
    given = {k: v for k, v in names.items() if v is not None}
    if len(set(map(str, given.values()))) > 1:
        raise InputError(f"conflicting {what}: " + ", ".join(f"{k} {v}" for k, v in given.items()))
    return next(iter(given.values()), None)


@cli.command()
@click.option("--checkpoint_path", "--checkpoint-path", "checkpoint_path", required=True, type=click.Path(path_type=Path),
              help="Wav2Lip checkpoint (wav2lip.pth or wav2lip_gan.pth).")
@click.option("--face", "face", type=click.Path(path_type=Path), help="Video, image or folder of frames with a face.")
@click.option("--image", "image", type=click.Path(path_type=Path), help="Alias of --face (for a still image).")
@click.option("--video", "video", type=click.Path(path_type=Path), help="Alias of --face (video or folder of frames).")
@click.option("--audio", "audios", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Audio (wav, mp3, m4a, or a video's audio track). Give it several times for one video per audio: "
                   "--outfile is then a folder or a name with {audio}.")
@click.option("--outfile", "outfile", type=click.Path(path_type=Path), help="Output video [results/result_voice.mp4].")
@click.option("--output", "output", type=click.Path(path_type=Path), help="Alias of --outfile.")
@click.option("--static", is_flag=False, flag_value="true", default="false", callback=parse_bool, metavar="[BOOL]",
              help="Use only the first frame. Bare flag or True/False.")
@click.option("--fps", type=float, default=25.0, show_default=True, help="Frame rate for an image or a frames folder.")
@click.option("--pads", nargs=4, type=int, default=(0, 10, 0, 0), show_default=True, help="Box padding: top bottom left right.")
@with_options(*DETECTION_OPTIONS)
@click.option("--wav2lip_batch_size", "--wav2lip-batch-size", "wav2lip_batch_size", type=int, default=128, show_default=True,
              help="Faces per Wav2Lip generator batch (lower it if memory runs out).")
@with_options(*FRAME_OPTIONS)
@click.option("--box", nargs=4, type=int, default=(-1, -1, -1, -1), show_default=True,
              help="Fixed face box y1 y2 x1 x2 instead of detection.")
@click.option("--nosmooth", is_flag=True, help="Do not smooth detected boxes over time.")
@click.option("--s3fd-checkpoint", "--s3fd_checkpoint", "s3fd_checkpoint", type=click.Path(path_type=Path),
              default=Path("checkpoints/s3fd.pth"), show_default=True, help="S3FD face detector weights.")
@with_options(*RUNNER_OPTIONS)
@click.option("--profile", "show_profile", is_flag=True, help="Print a per-stage timing table at the end.")
@click.option("--on-missing-face", "--on_missing_face", "on_missing_face", type=click.Choice(ON_MISSING_FACE),
              default="error", show_default=True, help="Frame without a face: fail, pass it through, or reuse the last box.")
@click.option("--dump-intermediates", "--dump_intermediates", "dump_intermediates", type=click.Path(path_type=Path),
              help="Write mel/boxes/pred/frames .npy files to this folder (parity checks on short clips).")
@click.option("--save-frames", "--save_frames", "save_frames", type=click.Path(path_type=Path),
              help="Also write the output frames as PNG images to this folder.")
@click.option("--ffmpeg", type=str, help="ffmpeg executable to use [imageio-ffmpeg's].")
@click.option("--crf", type=int, default=18, show_default=True, help="H.264 quality (lower is better).")
@PRESET_OPTION
@click.option("--decoder", type=click.Choice(("auto", "opencv", "dali")), default="auto", show_default=True,
              help="GPU runs: decode with OpenCV into pinned buffers, or with DALI (NVDEC); auto = DALI where it "
                   "applies. CPU runs always use OpenCV (the reference's decoder).")
@click.option("--encoder", type=click.Choice(("auto", "libx264", "h264_nvenc")), default="auto", show_default=True,
              help="H.264 encoder; auto = NVENC when the GPU has it (H100/H200 do not), else libx264.")
@click.option("--blend", type=click.Choice(("none", "feather")), default="none", show_default=True,
              help="Paste-back: the original's hard box, or feathered edges that hide the box seam.")
@click.option("--frame-memory", "--frame_memory", "frame_memory", type=float, default=256.0, show_default=True,
              metavar="MIB", help="Memory for frames in flight (generator batch, encoder queue, decode look-ahead); "
              "large frames get smaller generator batches, with the same output.")
@click.option("--boxes", type=click.Path(path_type=Path),
              help="Per-frame face boxes (JSON from `detect --json`, or your own list) instead of S3FD.")
@click.option("--score", is_flag=True, help="Score the generated faces: lip-sync expert (sync loss, similarity, "
              "offset) and quality discriminator; in the final line and --json.")
@click.option("--expert-checkpoint", "expert_checkpoint", type=click.Path(path_type=Path),
              help="The lip-sync expert for --score (lipsync_expert.pth).")
@click.option("--disc-checkpoint", "disc_checkpoint", type=click.Path(path_type=Path),
              help="The visual quality discriminator for --score.")
@click.option("--score-every", "score_every", type=int, default=1, show_default=True, metavar="K",
              help="--score the 5-frame windows and the faces that start at every K-th frame only "
              "(5: windows side by side, about a third of the scoring time).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors (and the JSON of --json -).")
@PROGRESS_OPTION
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write a JSON report of the run here ('-' = stdout).")
@user_errors
def infer(face: Path | None, image: Path | None, video: Path | None, outfile: Path | None, output: Path | None,
          audios: tuple[Path, ...], quiet: bool, progress: str, json_path: Path | None, show_profile: bool,
          **kwargs: Any) -> None:
    """Lip-sync a face video or image to an audio track (or to several, one video each)."""
    from .progress import Progress

    face_path = _one_of({"--face": face, "--image": image, "--video": video}, "face inputs")
    if face_path is None:
        raise InputError("missing option --face (or --image / --video)")
    out_path = _one_of({"--outfile": outfile, "--output": output}, "outputs") or Path("results/result_voice.mp4")
    setup_logging(quiet, progress)
    options = InferenceOptions(face=face_path, outfile=out_path, audio=audios[0], **kwargs)
    if len(audios) > 1:
        _infer_many(options, audios, quiet, json_path, show_profile)
        return
    from .session import run_inference

    # run_inference checks the options, the face and the audio before any model loads; the --json
    # target is this command's, so it is checked first.
    _check_json(json_path, options)
    with Progress("lip-sync", unit="frame", enabled=not quiet) as shown:
        result = run_inference(options, on_start=shown.start, on_frame=shown.update, on_phase=shown.phase)
    report = result.report()
    if json_path is not None:
        write_json(json_path, report)
    _finish(result, report, quiet, show_profile)


def _check_json(json_path: Path | None, options: InferenceOptions) -> None:
    check_json_path(json_path, *options.paths())


def _finish(result: Any, report: dict[str, Any], quiet: bool, show_profile: bool) -> None:
    if show_profile:  # asked for explicitly, so printed even with --quiet
        click.echo(_stage_table(result.stages), err=True)
        click.echo(_rate_line(result.rate), err=True)
        if result.resources:
            from .measure import describe_usage

            click.echo(describe_usage(result.resources), err=True)
    if not quiet:
        video_seconds = report["video_seconds"]
        click.echo(f"Wrote {result.outfile}: {result.frames} frames, {video_seconds:.2f} s of video, in "
                   f"{result.seconds:.1f} s wall time ({result.frames / result.seconds:.1f} frames/s, "
                   f"{video_seconds / result.seconds:.2f}x real time)" + _scores_line(result), err=True)


def _scores_line(result: Any) -> str:
    if not result.scores:
        return ""
    from .scoring.online import summary

    return f"; {summary(result.scores)}"


def _infer_many(options: InferenceOptions, audios: tuple[Path, ...], quiet: bool, json_path: Path | None,
                show_profile: bool) -> None:
    """One video per audio; models and detection once. A failed audio is an Error line; exit 1 if any failed."""
    from .many_audios import OWN_PROBLEMS, plan_runs, run_many
    from .progress import Progress

    # every output against every input and each other (--json too), then what all audios share fails once,
    # up front (checked with the first audio whose own files pass); an audio's own problem is its outcome
    runs = plan_runs(options, audios, {"--json": None if to_stdout(json_path) else json_path})
    for run in runs:
        try:
            run.validate()
            break
        except OWN_PROBLEMS:
            continue
    _check_json(json_path, runs[0])
    options.check_face_source()
    bars: list[Progress] = []

    def progress(opts: InferenceOptions) -> dict[str, Any]:
        name = Path(opts.audio).name
        bar = Progress(f"lip-sync {name}", unit="frame", enabled=not quiet)
        bars.append(bar)
        return {"on_start": bar.start, "on_frame": bar.update, "on_phase": lambda label: bar.phase(f"{name}: {label}")}

    reports, failed, kept = [], 0, []
    try:
        for outcome in run_many(options, audios, progress=progress):
            while bars:
                bars.pop().close(failed=outcome.result is None)
            if outcome.result is None:
                failed += 1
                click.echo(f"Error: {outcome.error}", err=True)
                reports.append({"audio": str(outcome.audio), "outfile": str(outcome.outfile), "error": outcome.error})
                continue
            kept.append(outcome.outfile)
            report = {"audio": str(outcome.audio), **outcome.result.report()}
            reports.append(report)
            _finish(outcome.result, report, quiet, show_profile)
    except KeyboardInterrupt as exc:  # the finished outputs are kept: say which, and which are not
        while bars:
            bars.pop().close(failed=True)
        interrupted_exit(exc, kept_and_lost([str(out) for out in kept],
                                            [str(run.outfile) for run in runs if run.outfile not in kept]))
    finally:
        while bars:
            bars.pop().close(failed=True)
    if json_path is not None:
        write_json(json_path, {"runs": reports, "failed": failed})
    if failed:
        sys.exit(1)


def _stage_table(rows: list[dict]) -> str:
    gpu = any("gpu_seconds" in row for row in rows)  # CUDA events on the compute stream (a GPU run only)
    lines = [f"{'stage':<12} {'busy s':>9} {'items':>7} {'items/s':>10}" + (f" {'GPU s':>9}" if gpu else "")]
    for row in rows:
        rate = "" if row["items_per_second"] is None else f"{row['items_per_second']:.1f}"
        gpu_s = "" if "gpu_seconds" not in row else f"{row['gpu_seconds']:.3f}"
        lines.append(f"{row['stage']:<12} {row['seconds']:>9.3f} {row['items']:>7} {rate:>10}" + (f" {gpu_s:>9}" if gpu else ""))
    return "\n".join(lines)


def _rate_line(rate: dict) -> str:
    steady = rate.get("steady_fps")
    first = rate.get("first_batch_s")
    return (f"steady {'n/a (fewer than two batches)' if steady is None else f'{steady:.1f} frames/s'} over "
            f"{rate.get('batches', 0)} written batches; {'?' if first is None else f'{first:.2f}'} s to the first "
            "(start-up: audio, load, warm-up, detection, first batch)")


cli.add_command(build_engines_command)
cli.add_command(detect_command)
cli.add_command(batch_command)
cli.add_command(serve_command)
cli.add_command(score_command)
cli.add_command(avatar_command)
cli.add_command(stream_command)


def _listed(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--rungs a,b --rungs c`` -> ("a", "b", "c")."""
    return tuple(name.strip() for value in values for name in value.split(",") if name.strip())


def _size(text: str) -> tuple[int, int]:
    from .build_engines import parse_size

    return parse_size(text)


def _emit_report(text: str, data: dict[str, Any], json_path: Path | None) -> None:
    """The table goes to stdout, or to stderr when the JSON report takes stdout (``--json -``)."""
    click.echo(text, err=to_stdout(json_path))
    if json_path is not None:
        write_json(json_path, data)


def _check_run_outputs(kwargs: dict[str, Any], json_path: Path | None) -> None:
    """parity and bench: --json and --work-dir are writable, before the clip and the models are made."""
    inputs = {name: kwargs.get(key) for name, key in (
        ("--checkpoint_path", "checkpoint_path"), ("--s3fd-checkpoint", "s3fd_checkpoint"), ("--face", "face"),
        ("--audio", "audio"), ("--expert-checkpoint", "expert_checkpoint"), ("--disc-checkpoint", "disc_checkpoint"),
        ("--syncnet-checkpoint", "syncnet_checkpoint"))}
    if kwargs.get("work_dir") is not None:
        check_output_dir(kwargs["work_dir"], "--work-dir", inputs)
    check_json_path(json_path, inputs, {"--work-dir": kwargs.get("work_dir")})


_CHECKPOINT_OPTIONS = (
    click.option("--checkpoint_path", "--checkpoint-path", "checkpoint_path", required=True,
                 type=click.Path(path_type=Path), help="Wav2Lip checkpoint (wav2lip.pth or wav2lip_gan.pth)."),
    click.option("--s3fd-checkpoint", "--s3fd_checkpoint", "s3fd_checkpoint", type=click.Path(path_type=Path),
                 default=Path("checkpoints/s3fd.pth"), show_default=True, help="S3FD face detector weights."),
    click.option("--face", type=click.Path(path_type=Path), help="Face video [a generated talking-face clip]."),
    click.option("--audio", type=click.Path(path_type=Path), help="Its audio (with --face)."),
)


@cli.command()
@with_options(*_CHECKPOINT_OPTIONS)
@click.option("--rungs", multiple=True, metavar="NAMES",
              help="Only these rungs (comma-separated): onnxruntime-fp32, tensorrt-fp32, tensorrt-fp16, torch-fp16. "
              "A named rung that cannot run here fails. [the whole ladder; what cannot run is skipped]")
@click.option("--inputs", default="both", show_default=True, metavar="random|clip|both",
              help="Per-model inputs: random tensors in the real range, the clip's frames, or both.")
@click.option("--end-to-end/--no-end-to-end", default=True, show_default=True,
              help="Also run the whole pipeline on the clip and compare boxes, predictions and frames.")
@click.option("--tolerance", "tolerances", multiple=True, metavar="[PRECISION.]NAME=VALUE",
              help="Override a default tolerance, e.g. fp16.atol=0.05 or min_iou=0.8 "
              "(names: atol, rtol, frame_atol, min_iou, max_face_changes).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs and the generated clip.")
@click.option("--s3fd-batch", type=int, default=4, show_default=True, help="Random S3FD frames per batch.")
@click.option("--s3fd-size", default="240x320", show_default=True, metavar="HxW", help="Random S3FD frame size.")
@click.option("--wav2lip-batch", type=int, default=32, show_default=True, help="Random Wav2Lip faces per batch.")
@click.option("--clip-frames", type=int, default=8, show_default=True, help="Clip frames fed to the per-model checks.")
@click.option("--clip-seconds", type=float, default=2.0, show_default=True, help="Length of the generated clip.")
@click.option("--clip-size", default="128x160", show_default=True, metavar="HxW", help="Size of the generated clip.")
@click.option("--engines", "--engines-dir", "engines_dir", type=click.Path(path_type=Path),
              help="Use the engines in this folder [build them from the same ONNX files in the work folder].")
@click.option("--flavor", "--flavour", "flavor", type=click.Choice(("auto", "tensorrt", "tensorrt-rtx")),
              default="auto", show_default=True, help="TensorRT flavour.")
@click.option("--detect-every", "detect_every", type=int, default=1, show_default=True, metavar="K",
              help="Also measure this detection setting against full detection: per-frame IoU of the chosen "
              "box and the time (informational unless --tolerance min_iou is given).")
@click.option("--detect-size", "detect_size", type=int, metavar="N",
              help="Also measure S3FD on frames scaled to N px against full resolution (as --detect-every).")
@click.option("--expert-checkpoint", "--expert_checkpoint", "expert_checkpoint", type=click.Path(path_type=Path),
              help="Also compare the lip-sync expert's towers (lipsync_expert.pth) on every rung.")
@click.option("--disc-checkpoint", "--disc_checkpoint", "disc_checkpoint", type=click.Path(path_type=Path),
              help="Also compare the quality discriminator on every rung.")
@click.option("--syncnet-checkpoint", "--syncnet_checkpoint", "syncnet_checkpoint", type=click.Path(path_type=Path),
              help="Also compare syncnet_python's towers (syncnet_v2.model) on every rung.")
@click.option("--work-dir", type=click.Path(path_type=Path),
              help="Keep ONNX files, engines and pipeline dumps here (reused when up to date) [a temporary folder].")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the JSON report here ('-' = stdout).")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
@user_errors
def parity(rungs: tuple[str, ...], tolerances: tuple[str, ...], s3fd_size: str, clip_size: str,
           json_path: Path | None, quiet: bool, **kwargs: Any) -> None:
    """Compare torch FP32 with ONNX Runtime, TensorRT FP32/FP16 and torch FP16 on the same inputs."""
    from .parity import ParityOptions, run_parity, tolerances_with

    setup_logging(quiet)
    _check_run_outputs(kwargs, json_path)
    options = ParityOptions(rungs=_listed(rungs), tolerances=tolerances_with(tolerances), s3fd_size=_size(s3fd_size),
                            clip_size=_size(clip_size), **kwargs)
    report = run_parity(options, log=logging.getLogger("wav2lip_trt.parity").info)
    _emit_report(report.table(), report.to_json(), json_path)
    to_stderr = to_stdout(json_path)
    for line in report.failures():
        click.echo(f"  {line}", err=to_stderr)
    click.echo(report.summary(), err=to_stderr)
    sys.exit(0 if report else 1)


@cli.command()
@with_options(*_CHECKPOINT_OPTIONS)
@click.option("--modes", multiple=True, metavar="NAMES",
              help="What to measure, comma-separated: reference (the original algorithm), torch, onnxruntime, "
              "tensorrt, auto.  [reference,torch]")
@click.option("--seconds", type=float, default=4.0, show_default=True, help="Length of the generated clip.")
@click.option("--size", default="240x320", show_default=True, metavar="HxW", help="Size of the generated clip.")
@click.option("--fps", type=float, default=25.0, show_default=True, help="Frame rate of the generated clip.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Measured runs per mode.")
@click.option("--warmup", type=int, default=1, show_default=True, help="Discarded runs per mode first.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Device of the pipeline modes (the reference runs on the CPU).")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="auto", show_default=True,
              help="Precision of the pipeline modes; auto = FP16 for engines and CUDA, FP32 on CPU.")
@click.option("--engines", "--engines-dir", "engines_dir", type=click.Path(path_type=Path), default=Path("engines"),
              show_default=True, help="Engines for the tensorrt mode.")
@click.option("--flavor", "--flavour", "flavor", type=click.Choice(("auto", "tensorrt", "tensorrt-rtx")),
              default="auto", show_default=True, help="TensorRT flavour of the tensorrt mode.")
@click.option("--box", nargs=4, type=int, default=(-1, -1, -1, -1), show_default=True,
              help="Fixed face box y1 y2 x1 x2 instead of detection.")
@click.option("--face_det_batch_size", "--face-det-batch-size", "face_det_batch_size", type=int, default=16,
              show_default=True, help="Frames per S3FD face-detection batch.")
@click.option("--wav2lip_batch_size", "--wav2lip-batch-size", "wav2lip_batch_size", type=int, default=128,
              show_default=True, help="Faces per Wav2Lip generator batch.")
@click.option("--on-missing-face", "--on_missing_face", "on_missing_face", type=click.Choice(ON_MISSING_FACE),
              default="error", show_default=True, help="Pipeline modes; the reference always stops.")
@click.option("--micro", is_flag=True, help="Also time the hot stages and both networks in-process.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated clip.")
@click.option("--work-dir", type=click.Path(path_type=Path), help="Keep the clip and run files here [a temporary folder].")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the JSON report here ('-' = stdout).")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
@user_errors
def bench(modes: tuple[str, ...], size: str, json_path: Path | None, quiet: bool, **kwargs: Any) -> None:
    """Frames/s, real-time factor, stage throughput and peak memory per backend, against the original."""
    from .bench import BenchOptions, run_bench

    setup_logging(quiet)
    _check_run_outputs(kwargs, json_path)
    if modes:
        kwargs["modes"] = _listed(modes)
    options = BenchOptions(size=_size(size), **kwargs)
    report = run_bench(options, log=logging.getLogger("wav2lip_trt.bench").info)
    _emit_report(report.table(), report.to_json(), json_path)
