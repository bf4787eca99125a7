"""Many short jobs: twenty separate ``infer`` processes against one ``batch`` (local workers, then ``--ray``).

Twenty jobs of one generated 320x240 face clip and twenty different 1 s speech-like audios, each
with a fixed ``--box`` (no S3FD), on the CPU, with random-weight checkpoints in the released format
(same graphs and sizes as the real ones). Every mode runs as its user would run it, one command in
a fresh process, timed from outside:

* ``infer``: twenty ``wav2lip-trt infer`` processes one after another (each imports torch, loads
  the checkpoint and runs one job; torch uses every core);
* ``batch``: one ``wav2lip-trt batch`` process with the default number of worker processes (one per
  core here, each with one torch thread), and with ``--workers 1`` (one worker using every core);
* ``batch --ray``: the same command with ``--ray`` and no address, so it starts a local Ray
  instance (that start-up is in the time) with the default number of actors.

Every mode runs ``--rounds`` times (default 2), in alternating order, and the table takes each
mode's best round: other work on a shared machine only ever slows a round down.

Fixed cost per job = worker-seconds per job (wall time x workers / jobs) minus the mean time a job
spends in its session (``infer``: the job's time minus its model load, from ``--json``;
``batch``: the ``seconds`` of its results line). It is what each job costs beyond the lip-sync
itself: interpreter and torch start-up, checkpoint load, worker start-up shared over the jobs, idle
workers at the end. CPU seconds per job (user + system of the command and every process under it,
ffmpeg included) is the number that other load on the machine moves least; it is not measured for
``--ray``, whose actors are processes of Ray's daemons, not of the command.

    python benchmarks/jobs_bench.py                     # ~8 min on 2 quiet cores; writes results/jobs_cpu.json
    python benchmarks/jobs_bench.py --jobs 3 --smoke    # checks the script; writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BOX = (40, 200, 80, 240)  # y1 y2 x1 x2 inside 320x240 frames


def make_inputs(folder: Path, jobs: int, seconds: float, width: int, height: int) -> tuple[Path, list[Path]]:
    from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav

    face = write_video(folder / "face.mp4", talking_face_frames(int(round(25 * seconds)), width, height, seed=0), 25.0)
    audios = [write_wav(folder / f"speech{i:02d}.wav", float_to_int16(speechlike_audio(seconds, seed=i)), 16000)
              for i in range(jobs)]
    return face, audios


def run_infer(face: Path, audios: list[Path], checkpoint: Path, out: Path) -> dict:
    """Twenty separate processes, one after another."""
    from wav2lip_trt.measure import run_measured

    out.mkdir(parents=True)
    started, cpu = time.perf_counter(), _children_cpu()
    walls, in_session, peaks = [], [], []
    for i, audio in enumerate(audios):
        report = out / f"{i:02d}.json"
        run = run_measured([sys.executable, "-m", "wav2lip_trt", "infer", "--checkpoint_path", str(checkpoint),
                            "--face", str(face), "--audio", str(audio), "--outfile", str(out / f"{i:02d}.mp4"),
                            "--box", *map(str, BOX), "--device", "cpu", "--quiet", "--json", str(report)])
        if run.returncode != 0:
            raise SystemExit(f"infer failed: {run.stderr}")
        data = json.loads(report.read_text())
        load = sum(row["seconds"] for row in data["stages"] if row["stage"] == "load")
        walls.append(run.seconds)
        in_session.append(data["seconds"] - load)
        peaks.append(run.peak_rss_bytes)
    wall = time.perf_counter() - started
    return _summary("infer", wall, len(audios), 1, in_session, _children_cpu() - cpu,
                    process_seconds_median=round(statistics.median(walls), 3), peak_rss_mb=round(max(peaks) / 2**20))


def run_batch(face: Path, audios: list[Path], checkpoint: Path, out: Path, *extra: str, label: str) -> dict:
    """One ``batch`` command over the same jobs."""
    from wav2lip_trt.measure import run_measured

    out.mkdir(parents=True)
    jobs = out / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"face": str(face), "audio": str(audio), "outfile": str(out / f"{i:02d}.mp4"),
                                        "box": list(BOX)}) + "\n" for i, audio in enumerate(audios)))
    cpu = _children_cpu()
    run = run_measured([sys.executable, "-m", "wav2lip_trt", "batch", str(jobs), "--checkpoint_path", str(checkpoint),
                        "--device", "cpu", *extra])
    cpu = _children_cpu() - cpu
    if run.returncode != 0:
        raise SystemExit(f"batch {label} failed: {run.stderr}")
    rows = [json.loads(line) for line in (out / "jobs.results.jsonl").read_text().splitlines()]
    assert len(rows) == len(audios) and all(row["status"] == "ok" for row in rows), rows
    workers = len({row["worker"] for row in rows})
    if "--ray" in extra:
        cpu = None  # Ray's actors belong to its own daemons, not to the command: their CPU time is not seen here
    summary = _summary(label, run.seconds, len(audios), workers, [row["seconds"] for row in rows], cpu,
                       peak_rss_mb_parent=round(run.peak_rss_bytes / 2**20))
    summary["summary_line"] = run.stderr.strip().splitlines()[-1]
    return summary


def _summary(mode: str, wall: float, jobs: int, workers: int, in_session: list[float], cpu: float | None,
             **extra: object) -> dict:
    return {
        "mode": mode, "jobs": jobs, "workers": workers, "wall_seconds": round(wall, 2),
        "jobs_per_second": round(jobs / wall, 3),
        "job_seconds_in_session_median": round(statistics.median(in_session), 3),
        "fixed_seconds_per_job": round((wall * workers - sum(in_session)) / jobs, 3),
        "cpu_seconds_per_job": None if cpu is None else round(cpu / jobs, 3), **extra,
    }


def _children_cpu() -> float:
    """User + system CPU seconds of every finished descendant (a command's workers and ffmpeg included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=1.0, help="audio (and face clip) length of each job")
    parser.add_argument("--size", default="240x320", metavar="HxW")
    parser.add_argument("--rounds", type=int, default=2,
                        help="every mode this many times, in alternating order; the table takes each mode's best")
    parser.add_argument("--no-ray", action="store_true", help="skip the --ray mode")
    parser.add_argument("--out", type=Path, default=RESULTS / "jobs_cpu.json")
    parser.add_argument("--smoke", action="store_true", help="run, print, write no file")
    args = parser.parse_args()
    height, width = map(int, args.size.split("x"))

    from wav2lip_trt.jobs.local import cpu_cores, default_workers
    from wav2lip_trt.measure import machine_record
    from wav2lip_trt.random_weights import write_random_checkpoints

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="jobs-bench-") as tmp:
        folder = Path(tmp)
        checkpoint, _ = write_random_checkpoints(folder / "checkpoints", seed=0)
        face, audios = make_inputs(folder, args.jobs, args.seconds, width, height)
        default = f"batch (default: {default_workers('cpu', cpu_cores())} workers)"
        runs: dict[str, Callable[[Path], dict]] = {
            "infer": lambda out: run_infer(face, audios, checkpoint, out),
            "batch --workers 1": lambda out: run_batch(face, audios, checkpoint, out, "--workers", "1",
                                                       label="batch --workers 1"),
            default: lambda out: run_batch(face, audios, checkpoint, out, label=default),
        }
        if not args.no_ray:
            runs["batch --ray"] = lambda out: run_batch(face, audios, checkpoint, out, "--ray", label="batch --ray")
        rounds: list[list[dict]] = []
        for round_index in range(args.rounds):
            order = list(runs) if round_index % 2 == 0 else list(reversed(runs))
            results = {name: runs[name](folder / f"round{round_index}" / name.replace(" ", "_")) for name in order}
            rounds.append([results[name] for name in runs])
    modes = [max(tries, key=lambda mode: mode["jobs_per_second"]) for tries in zip(*rounds)]
    base = modes[0]["jobs_per_second"]
    for mode in modes:
        mode["speedup_vs_infer"] = round(mode["jobs_per_second"] / base, 2)
    record = {
        "benchmark": "jobs", "jobs": args.jobs, "audio_seconds": args.seconds, "size": f"{width}x{height}",
        "box": list(BOX), "device": "cpu", "default_cpu_workers": default_workers("cpu", cpu_cores()),
        "machine": {**machine_record(), "cpu_model": _cpu_model(), "ray": _version("ray")},
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],  # other work on the box
        "modes": modes,  # each mode's best round (highest jobs/s)
        "rounds": rounds,
    }
    for mode in modes:
        print(f"{mode['mode']:<22} {mode['wall_seconds']:7.1f} s  {mode['jobs_per_second']:.3f} jobs/s "
              f"(x{mode['speedup_vs_infer']})  job in session {mode['job_seconds_in_session_median']:.2f} s  "
              f"fixed {mode['fixed_seconds_per_job']:.2f} s/job  CPU {mode['cpu_seconds_per_job']} s/job")
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
