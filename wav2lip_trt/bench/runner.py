"""The parent side of ``bench``: make the clip, start one measured process per run (modes taking
turns, repeat by repeat, so a noisy machine slows them alike) and gather the report."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import Wav2LipTrtError
from ..files import work_dir
from .cases import hot_stage_cases, model_cases
from .options import BenchOptions
from .report import BenchReport, Clip, ModeResult, Run
from .timing import time_cases


class BenchRunError(Wav2LipTrtError):
    """A measured run failed; the message carries the run's own error line."""


def run_bench(options: BenchOptions, *, log: Callable[[str], None] | None = None) -> BenchReport:
    """Measure every mode on one clip: warm-up runs, then ``repeats`` rounds with the modes taking turns."""
    from ..measure import machine_record

    options.validate()
    say = log or (lambda _: None)
    started = time.perf_counter()
    with work_dir(options.work_dir, "wav2lip-trt-bench-") as work:
        clip = _clip(options, work)
        say(f"clip: {clip.width}x{clip.height}, {clip.frames} frames, {clip.audio_seconds:.2f} s of audio")
        runs: dict[str, list[Run]] = {m: [] for m in options.modes}
        total = options.warmup + options.repeats
        for round_index in range(total):
            warm = round_index < options.warmup
            # Rotate who goes first, so no mode always runs right after the same other one.
            shift = round_index % len(options.modes)
            order = options.modes[shift:] + options.modes[:shift]
            for mode in order:
                label = "warm-up" if warm else f"run {round_index - options.warmup + 1}/{options.repeats}"
                run = _measure(mode, options, clip, work, round_index)
                say(f"{mode} {label}: {run.seconds:.2f} s, peak RSS {run.peak_rss_bytes / 2**20:.0f} MiB, "
                    f"{run.minor_faults / run.frames:.0f} minor faults a frame, {100 * run.sys_share:.1f} % system time")
                if not warm:
                    runs[mode].append(run)
        modes = tuple(ModeResult(m, tuple(runs[m]), clip.audio_seconds) for m in options.modes)
        micro = {}
        if options.micro:
            say("timing the hot stages and the networks in this process")
            cases = hot_stage_cases(height=clip.height, width=clip.width, detect_batch=options.face_det_batch_size,
                                    generate_batch=options.wav2lip_batch_size, seed=options.seed)
            from ..backends import resolve_device

            cases += model_cases(options.checkpoint_path, options.s3fd_checkpoint, seed=options.seed,
                                 device=str(resolve_device(options.device)), s3fd_size=(clip.height, clip.width))
            micro = time_cases(cases, repeats=options.repeats, warmup=max(1, options.warmup))
    machine = machine_record()
    return BenchReport(clip, modes, options, machine, time.perf_counter() - started, micro, options.command())


def _clip(options: BenchOptions, work: Path) -> Clip:
    from ..audio import MelChunks, load_audio, melspectrogram
    from ..video import FaceSource

    generated = options.face is None
    if generated:
        from ..samples import write_talking_clip

        height, width = options.size
        face, audio = write_talking_clip(work / "clip", seconds=options.seconds, fps=options.fps, width=width,
                                         height=height, seed=options.seed)
    else:
        face, audio = Path(options.face), Path(options.audio)  # type: ignore[arg-type]
    info = FaceSource(face, fps=options.fps).info
    wav = load_audio(audio)
    frames = len(MelChunks(melspectrogram(wav), info.fps))
    return Clip(face, audio, generated, info.width, info.height, info.fps, frames, len(wav) / 16000)


def _inference_options(options: BenchOptions, clip: Clip, mode: str, outfile: Path) -> dict[str, Any]:
    """The InferenceOptions fields of one run, as JSON."""
    return {
        "checkpoint_path": str(options.checkpoint_path), "s3fd_checkpoint": str(options.s3fd_checkpoint),
        "face": str(clip.face), "audio": str(clip.audio), "outfile": str(outfile), "fps": options.fps,
        "box": list(options.box), "face_det_batch_size": options.face_det_batch_size,
        "wav2lip_batch_size": options.wav2lip_batch_size,
        "on_missing_face": "error" if mode == "reference" else options.on_missing_face,
        "backend": "torch" if mode == "reference" else mode,
        "device": "cpu" if mode == "reference" else options.device,
        "precision": "fp32" if mode == "reference" else options.precision,
        "engines_dir": str(options.engines_dir), "flavor": options.flavor,
    }


def _measure(mode: str, options: BenchOptions, clip: Clip, work: Path, index: int) -> Run:
    from ..measure import run_measured

    spec_path = work / f"run-{mode}-{index}.json"
    result_path = work / f"run-{mode}-{index}.result.json"
    outfile = work / f"out-{mode}-{index}.mp4"
    spec = {"mode": mode, "options": _inference_options(options, clip, mode, outfile), "result": str(result_path)}
    spec_path.write_text(json.dumps(spec))
    measured = run_measured([sys.executable, "-m", "wav2lip_trt.bench", "--child", str(spec_path)])
    if measured.returncode != 0 or not result_path.exists():
        lines = [line for line in measured.stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else "no error output"
        raise BenchRunError(f"the {mode} run failed (exit code {measured.returncode}): {last}")
    result = json.loads(result_path.read_text())
    outfile.unlink(missing_ok=True)
    return Run(mode=mode, seconds=result["seconds"], process_seconds=measured.seconds,
               peak_rss_bytes=measured.peak_rss_bytes, frames=result["frames"], backend=result["backend"],
               precision=result["precision"], device=result["device"], stages=result["stages"],
               gpu_peak_bytes=result.get("gpu_peak_bytes"), gpu_device_peak_bytes=result.get("gpu_device_peak_bytes"),
               threads=result.get("threads"), user_seconds=measured.user_seconds, sys_seconds=measured.sys_seconds,
               minor_faults=measured.minor_faults, steady_fps=result.get("steady_fps"),
               first_batch_seconds=result.get("first_batch_seconds"))
