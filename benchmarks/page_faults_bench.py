"""Page faults, system time and peak RSS of whole ``infer`` runs, before and after a change, side by side.

Issue 21: with glibc's mmap threshold fixed at 1 MiB every frame and activation was a fresh mapping,
faulted in and zeroed by the kernel on every batch. This runs ``wav2lip-trt infer`` (torch CPU,
default options) on generated clips, once with the code at ``--before`` (a checkout of the older
commit, e.g. ``git worktree add /tmp/before <sha>``; run through ``PYTHONPATH``) and once with this
checkout, the two taking turns (A B, then B A). Each run is a fresh process measured by ``wait4``'s
rusage (its ffmpeg included, as ``/usr/bin/time`` counts it): minor page faults per output frame,
system time and peak RSS are robust to other load on the machine; wall and user time are not.

The steady state apart from the start-up (imports, model loading, the first batch growing the heap),
for both commits alike: each case also runs a short clip once per commit, and the steady figures
are the long run's counts minus the short run's, per extra output frame (``steady``). The newer
code also reports its job's own counts from model loading on (``--json`` ``resources``: this
process alone, ffmpeg apart), differenced the same way (``steady`` ``job_faults_per_frame``).

    python benchmarks/page_faults_bench.py --before /tmp/before [--after /tmp/after] [--cases 4k-box] [--repeats 2]
    python benchmarks/page_faults_bench.py --smoke     # a 1 s 160x128 clip, this checkout only; no file

Writes ``benchmarks/results/page_faults_cpu.json`` (merged case by case, so cases may be run apart).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "page_faults_cpu.json"
SIZES = {"160x128": (160, 128), "320x240": (320, 240), "720p": (1280, 720), "4k": (3840, 2160)}
BOXES = {  # y1 y2 x1 x2 around the generated face
    "160x128": (20, 110, 40, 120), "320x240": (30, 210, 80, 240), "720p": (100, 620, 340, 940),
    "4k": (300, 1860, 1000, 2840),
}
LENGTHS = {  # seconds of the (short, long) clips: 13 s as in the issue with a box; detection (the random-weight
    # S3FD passes nearly every anchor to post-processing) takes minutes, so short clips; a short run holds
    # two S3FD batches, as the second still grows the heap (benchmarks/README.md)
    "320x240-box": (1.0, 13.0), "720p-box": (1.0, 13.0), "4k-box": (1.0, 4.0), "320x240-detect": (1.4, 2.06),
    "720p-detect": (0.6, 0.92), "4k-detect": (0.2, 0.28), "160x128-box": (0.5, 1.0),
}
EXTRA = {  # S3FD runs at full resolution in float32: ~1 GB of activations a 720p frame, ~9 GB a 4K frame
    "720p-detect": ["--face_det_batch_size", "4"], "4k-detect": ["--face_det_batch_size", "1"],
}


def _clip(work: Path, size: str, seconds: float) -> tuple[Path, Path]:
    from wav2lip_trt.samples import write_talking_clip

    width, height = SIZES[size]
    return write_talking_clip(work / f"clip_{size}_{seconds:g}", seconds=seconds, fps=25.0, width=width, height=height)


def _run(tree: Path | None, case: str, clip: tuple[Path, Path], checkpoints: tuple[Path, Path], out: Path) -> dict:
    from wav2lip_trt.measure import run_measured

    size, mode = case.split("-")
    cmd = [sys.executable, "-m", "wav2lip_trt", "infer", "-q", "--device", "cpu", "--checkpoint_path",
           str(checkpoints[0]), "--s3fd-checkpoint", str(checkpoints[1]), "--face", str(clip[0]), "--audio",
           str(clip[1]), "--outfile", str(out), "--json", str(out.with_suffix(".json")), *EXTRA.get(case, [])]
    cmd += ["--box", *map(str, BOXES[size])] if mode == "box" else ["--no-cache", "--on-missing-face", "previous"]
    env = dict(os.environ, PYTHONPATH=str(tree or ROOT))
    m = run_measured(cmd, env=env, cwd=str(out.parent))  # not this checkout: its folder would shadow PYTHONPATH
    if m.returncode != 0:
        raise SystemExit(f"{case} ({tree or 'this checkout'}) failed: {m.stderr.strip().splitlines()[-1:]}")
    report = json.loads(out.with_suffix(".json").read_text())
    frames, job = int(report["frames"]), report.get("resources")  # the job's own (models loaded): newer code only
    out.unlink(missing_ok=True)
    return {"job_faults_per_frame": None if not job else job["minor_faults_per_frame"],
            "job_sys_percent": None if not job else round(100 * job["sys_share"], 1), "threads": report.get("threads"),
            "wall_seconds": round(m.seconds, 2), "user_seconds": round(m.user_seconds, 2),
            "sys_seconds": round(m.sys_seconds, 2), "sys_percent": round(100 * m.sys_share, 1),
            "minor_faults": m.minor_faults, "faults_per_frame": round(m.minor_faults / frames),
            "peak_rss_mb": round(m.peak_rss_bytes / 1e6), "frames": frames, "load_average": round(os.getloadavg()[0], 1)}


def _steady(long: dict, short: dict) -> dict:
    """What each output frame beyond the short run's cost: the start-up and the heap's growth cancel."""
    frames = long["frames"] - short["frames"]
    user, system = long["user_seconds"] - short["user_seconds"], long["sys_seconds"] - short["sys_seconds"]
    steady = {"frames": frames, "faults_per_frame": round((long["minor_faults"] - short["minor_faults"]) / frames),
              "sys_percent": round(100 * system / (user + system), 1) if user + system > 0 else None,
              "cpu_seconds_per_frame": round((user + system) / frames, 3), "job_faults_per_frame": None}
    if long["job_faults_per_frame"] is not None and short["job_faults_per_frame"] is not None:  # ffmpeg apart
        job = long["job_faults_per_frame"] * long["frames"] - short["job_faults_per_frame"] * short["frames"]
        steady["job_faults_per_frame"] = round(job / frames)
    return steady


def _commit(tree: Path | None) -> str:
    done = subprocess.run(["git", "-C", str(tree or ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="checkout of the older commit (its wav2lip_trt is imported)")
    parser.add_argument("--after", type=Path, help="checkout of the newer commit (default: this one, as it is)")
    parser.add_argument("--cases", default="320x240-box,720p-box,4k-box,320x240-detect,720p-detect,4k-detect",
                        help=f"comma-separated, from {', '.join(LENGTHS)}")
    parser.add_argument("--repeats", type=int, default=2, help="long runs per commit (the short run is made once)")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    from wav2lip_trt.measure import machine_info
    from wav2lip_trt.random_weights import write_random_checkpoints

    cases = ["160x128-box"] if args.smoke else args.cases.split(",")
    after = args.after.resolve() if args.after else None
    trees: dict[str, Path | None] = {"after": after}
    if args.before is not None and not args.smoke:
        trees = {"before": args.before.resolve(), "after": after}
    commits = {name: _commit(tree) for name, tree in trees.items()}
    with tempfile.TemporaryDirectory(prefix="page-faults-") as tmp:
        work = Path(tmp)
        checkpoints = write_random_checkpoints(work / "ck")
        for case in cases:
            short_seconds, long_seconds = LENGTHS[case]
            short_clip, long_clip = (_clip(work, case.split("-")[0], s) for s in (short_seconds, long_seconds))
            short = {name: _run(tree, case, short_clip, checkpoints, work / f"out_{name}.mp4")
                     for name, tree in trees.items()}
            print(case, "short", short, flush=True)
            runs: dict[str, list[dict]] = {name: [] for name in trees}
            for repeat in range(args.repeats):
                order = list(trees) if repeat % 2 == 0 else list(reversed(trees))  # take turns: A B, B A, ...
                for name in order:
                    runs[name].append(_run(trees[name], case, long_clip, checkpoints, work / f"out_{name}.mp4"))
                    print(case, name, runs[name][-1], flush=True)
            entry: dict = {"seconds_of_audio": long_seconds, "short_seconds_of_audio": short_seconds,
                           "extra_args": EXTRA.get(case, []), "commits": commits, "runs": runs, "short_runs": short,
                           "steady": {name: [_steady(run, short[name]) for run in runs[name]] for name in trees}}
            if "before" in runs:
                entry["wall_ratio_before_over_after"] = [round(b["wall_seconds"] / a["wall_seconds"], 3)
                                                         for b, a in zip(runs["before"], runs["after"])]
            print(case, "steady", entry["steady"], flush=True)
            if args.smoke:
                continue
            record = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}  # re-read: cases may run in parallel
            record.setdefault("cases", {})[case] = entry
            record["machine"] = machine_info()
            record["command"] = "wav2lip-trt infer -q --device cpu (--box ... | --no-cache --on-missing-face previous)"
            record.pop("before", None)  # per case now: entry["commits"]
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
