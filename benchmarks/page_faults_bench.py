"""Page faults, system time and peak RSS of whole ``infer`` runs, before and after a change, side by side.

Issue 21: with glibc's mmap threshold fixed at 1 MiB every frame and activation was a fresh mapping,
faulted in and zeroed by the kernel on every batch. This runs ``wav2lip-trt infer`` (torch CPU,
default options) on generated clips, once with the code at ``--before`` (a checkout of the older
commit, e.g. ``git worktree add /tmp/before <sha>``; run through ``PYTHONPATH``) and once with this
checkout, the two taking turns case by case. Each run is a fresh process measured by ``wait4``'s
rusage (its ffmpeg included, as ``/usr/bin/time`` counts it): minor page faults per output frame
and system time are robust to other load on the machine; wall time is quoted only as the ratio of
runs made back to back.

    python benchmarks/page_faults_bench.py --before /tmp/before [--cases 320x240-box,720p-box] [--repeats 1]
    python benchmarks/page_faults_bench.py --smoke     # a 1 s 160x128 clip, this checkout only; no file

Writes ``benchmarks/results/page_faults_cpu.json`` (merged case by case, so cases may be run apart).
"""

from __future__ import annotations

import argparse
import json
import os
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
SECONDS = {  # clip length per case: 13 s as in the issue where a run fits the machine's time
    "320x240-box": 13.0, "720p-box": 13.0, "4k-box": 3.0, "320x240-detect": 13.0, "720p-detect": 2.0,
    "4k-detect": 1.0, "160x128-box": 1.0,
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
           str(clip[1]), "--outfile", str(out), "--json", str(out.with_suffix(".json"))]
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
            "peak_rss_mb": round(m.peak_rss_bytes / 1e6), "frames": frames}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="checkout of the older commit (its wav2lip_trt is imported)")
    parser.add_argument("--cases", default="320x240-box,720p-box,4k-box,320x240-detect,720p-detect",
                        help=f"comma-separated, from {', '.join(SECONDS)}")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    from wav2lip_trt.measure import machine_info
    from wav2lip_trt.random_weights import write_random_checkpoints

    cases = ["160x128-box"] if args.smoke else args.cases.split(",")
    trees: dict[str, Path | None] = {"after": None}
    if args.before is not None and not args.smoke:
        trees = {"before": args.before.resolve(), "after": None}
    record = json.loads(RESULTS.read_text()) if RESULTS.exists() and not args.smoke else {}
    with tempfile.TemporaryDirectory(prefix="page-faults-") as tmp:
        work = Path(tmp)
        checkpoints = write_random_checkpoints(work / "ck")
        for case in cases:
            clip = _clip(work, case.split("-")[0], SECONDS[case])
            runs: dict[str, list[dict]] = {name: [] for name in trees}
            for repeat in range(args.repeats):
                order = list(trees) if repeat % 2 == 0 else list(reversed(trees))  # take turns
                for name in order:
                    runs[name].append(_run(trees[name], case, clip, checkpoints, work / f"out_{name}.mp4"))
                    print(case, name, runs[name][-1], flush=True)
            entry: dict = {"seconds_of_audio": SECONDS[case], "runs": runs}
            if "before" in runs:
                entry["wall_ratio_before_over_after"] = [round(b["wall_seconds"] / a["wall_seconds"], 3)
                                                         for b, a in zip(runs["before"], runs["after"])]
            record.setdefault("cases", {})[case] = entry
    if args.smoke:
        return
    record["machine"] = machine_info()
    record["before"] = str(args.before) if args.before else None
    record["command"] = "wav2lip-trt infer -q --device cpu (--box ... | --no-cache --on-missing-face previous)"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
