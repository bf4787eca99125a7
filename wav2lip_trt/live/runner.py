"""The ``stream`` command's run: check everything, load the generator, then feed, lip-sync and write.

Threads: the audio source feeds the stream from its own thread (a pipe read may block); the main
thread takes finished frames and writes them, so Ctrl-C/SIGTERM land where every ``with`` block
unwinds: the stream's worker stops, ffmpeg is killed, a file output's temporary file is removed.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

from ..cli_json import check_json_path, to_stdout, write_json
from ..errors import AudioError, InputError
from ..files import check_output_dir, check_output_file
from .avatar import load_avatar
from .sinks import FileSink, OutputClosed, StdoutSink, stdout_is_terminal
from .sources import PcmReader, file_chunks

log = logging.getLogger(__name__)


def run_stream_command(*, avatar_dir: Path, audio: str, outfile: str, checkpoint_path: Path, device: str, backend: str,
                       precision: str, engines_dir: Path, flavor: str, sample_format: str, rate: int, channels: int,
                       realtime: bool, chunk_ms: float, idle_timeout: float, clock: str, delay: float, policy: str,
                       queue_frames: int, max_batch: int, wav2lip_batch_size: int, blend: str, stdout_format: str,
                       save_frames: Path | None, ffmpeg: str | None, crf: int, preset: str, encoder: str, quiet: bool,
                       json_path: Path | None, expert_checkpoint: Path | None = None, disc_checkpoint: Path | None = None,
                       score_every: int = 1) -> dict[str, Any]:
    from ..audio import load_audio
    from ..cli_errors import setup_logging
    from ..encoders import choose_encoder
    from ..encode import check_container
    from ..ffmpeg import find_ffmpeg
    from ..session import Session

    setup_logging(quiet)
    started = time.perf_counter()
    from_stdin, into_stdout = audio == "-", outfile == "-"
    if into_stdout and to_stdout(json_path):
        raise InputError("--outfile - and --json - both want stdout; write the report to a file")
    if not chunk_ms > 0:
        raise InputError(f"--chunk-ms must be positive, got {chunk_ms}")
    if idle_timeout < 0:
        raise InputError(f"--idle-timeout must be 0 (wait for ever) or more seconds, got {idle_timeout}")
    for label, path in (("--checkpoint_path", checkpoint_path), ("--expert-checkpoint", expert_checkpoint),
                        ("--disc-checkpoint", disc_checkpoint)):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{label} file not found: {path}")
    if not isinstance(score_every, int) or score_every < 1:
        raise InputError(f"--score-every must be a whole number of frames, at least 1, got {score_every}")
    avatar = load_avatar(avatar_dir)
    avatar.check_checkpoint(Path(checkpoint_path))  # before the models load
    inputs = {"--audio": None if from_stdin else Path(audio), "--checkpoint_path": Path(checkpoint_path),
              "--avatar": Path(avatar_dir)}
    outputs = {"--outfile": None if into_stdout else Path(outfile), "--save-frames": save_frames}
    if into_stdout:
        if stdout_is_terminal():
            raise InputError("--outfile -: stdout is a terminal; pipe it into ffplay or a file (see README, Live lip-sync)")
    else:
        check_output_file(Path(outfile), "--outfile", inputs)
        check_container(Path(outfile), "--outfile")
    if save_frames is not None:
        check_output_dir(save_frames, "--save-frames", inputs, {"--outfile": outputs["--outfile"]})
    check_json_path(json_path, inputs, outputs)
    if from_stdin:
        if sys.stdin is None or sys.stdin.isatty():
            raise InputError(f"--audio -: stdin is a terminal; pipe raw {sample_format} PCM into it")
        reader: PcmReader | None = PcmReader(sys.stdin.buffer, sample_format=sample_format, rate=rate, channels=channels,
                                             idle_timeout=idle_timeout or None)
        source: Iterable[np.ndarray] = reader  # type: ignore[assignment]
    else:
        reader = None
        source = file_chunks(load_audio(Path(audio), ffmpeg=ffmpeg), chunk_ms / 1000, realtime=realtime)
    ffmpeg_exe = find_ffmpeg(ffmpeg)
    if save_frames is not None:
        Path(save_frames).mkdir(parents=True, exist_ok=True)
    with Session(checkpoint_path, None, device=device, backend=backend, precision=precision, engines_dir=engines_dir,
                 flavor=flavor) as session:
        if into_stdout:
            sink: FileSink | StdoutSink = StdoutSink(stdout_format, width=avatar.width, height=avatar.height,
                                                     fps=avatar.fps, ffmpeg=ffmpeg_exe, crf=crf)
        else:
            exact_track = not from_stdin and clock == "audio"  # else: mux the samples the stream used
            sink = FileSink(Path(outfile), width=avatar.width, height=avatar.height, fps=avatar.fps,
                            audio=Path(audio) if exact_track else None, record=not exact_track, ffmpeg=ffmpeg_exe,
                            encoder=choose_encoder(encoder, ffmpeg_exe), crf=crf, preset=preset)
        record = sink.add_samples if isinstance(sink, FileSink) else None
        try:
            with sink, session.stream(avatar, clock=clock, policy=policy, queue_frames=queue_frames, max_batch=max_batch,
                                      reference_batch=wav2lip_batch_size, blend=blend, delay=delay,
                                      on_samples=record, expert_checkpoint=expert_checkpoint,
                                      disc_checkpoint=disc_checkpoint, score_every=score_every) as live:
                failure: list[BaseException] = []
                label = "stdin" if from_stdin else str(audio)
                producer = threading.Thread(target=_produce, args=(live, source, failure, label), daemon=True,
                                            name="wav2lip-trt-live-source")
                producer.start()
                shown = time.perf_counter()
                for frame in live.frames():
                    sink.write(frame.image)
                    if save_frames is not None:
                        path = Path(save_frames) / f"frame_{frame.index:06d}.png"
                        if not cv2.imwrite(str(path), frame.image):
                            raise InputError(f"--save-frames {save_frames}: cannot write {path.name}")
                    if not quiet and time.perf_counter() - shown >= 1.0:
                        shown = time.perf_counter()
                        _progress(live.stats.report())
                producer.join(timeout=5)
                if failure:
                    raise failure[0]
        except OutputClosed:
            _quiet_stdout()
            raise
    report = {"outfile": outfile, "avatar": str(avatar_dir), "clock": clock, "policy": policy,
              "width": avatar.width, "height": avatar.height, "fps": avatar.fps,
              "stopped_without_close": bool(reader is not None and reader.stopped_early), **live.stats.report(),
              "total_seconds": round(time.perf_counter() - started, 3)}
    if live.scorer is not None:
        report.update(live.scorer.report(total_frames=live.total))
    if json_path is not None:
        write_json(json_path, report)
    if not quiet:
        where = "stdout" if into_stdout else outfile
        click.echo(f"Streamed {report['frames']} frames to {where} ({report['dropped']} dropped, {report['gaps']} gaps "
                   f"{report['gap_seconds']:.2f} s) in {report['seconds']:.1f} s: {report['frames_per_second']} frames/s, "
                   f"{_latency(report, 'max')}" + _scores(report), err=True)
    return report


def _scores(report: dict[str, Any]) -> str:
    if "expert" not in report and "visual_quality" not in report:
        return ""
    from ..scoring.online import summary

    return f"; {summary(report)}"


def _produce(live: Any, source: Iterable[np.ndarray], failure: list[BaseException], label: str | None = None) -> None:
    """Feed ``source`` to ``live``; an audio problem found only at the end (nothing came) names ``label``."""
    try:
        for chunk in source:
            live.feed(chunk)
        live.close()
    except AudioError as exc:
        failure.append(AudioError(f"{label}: {exc}") if label and label not in str(exc) else exc)
        live.abort()
    except BaseException as exc:  # the main thread raises it after the frames it already has
        failure.append(exc)
        live.abort()


def _progress(report: dict[str, Any]) -> None:
    click.echo(f"stream: {report['frames']} frames, {report['audio_seconds']:.1f} s of audio, {_latency(report)}, "
               f"{report['dropped']} dropped, {report['gaps']} gaps ({report['gap_seconds']:.1f} s)", err=True)


def _latency(report: dict[str, Any], *extra: str) -> str:
    """The running per-chunk latency, or that no chunk has all its frames out yet."""
    lat = report["latency_ms"]
    if lat["p50"] is None:
        return "latency p50 - (no chunk's frames all out yet)"
    return "latency " + ", ".join(f"{q} {lat[q]} ms" for q in ("p50", "p95", *extra))


def _quiet_stdout() -> None:
    """After the reader of stdout went away, let the interpreter's final flush go nowhere instead of failing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
