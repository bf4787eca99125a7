"""What ``infer --score`` costs: whole ``wav2lip-trt infer`` processes with and without scoring, CPU.

Random-weight checkpoints in the released formats, a generated talking-face clip. For each run
kind (S3FD detection on every frame, the default; a fixed ``--box``, where the generator is all
the work) and backend (torch, onnxruntime — the scoring networks run on the run's backend), three
commands run alternately (plain, ``--score`` with the expert, with the expert and the quality
discriminator), ``--repeats`` times each; the cost is the median over repeats of each repeat's
(scored - plain) / plain, so a machine whose speed drifts still gives fair ratios. The scorer's
own time (its ``score`` stage row) is reported beside it.

    python benchmarks/score_cost_bench.py [--seconds 4] [--size 360x640] [--repeats 3]   # ~20 min on 2 cores

Writes ``benchmarks/results/score_cost_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wav2lip_trt.measure import machine_info, run_measured  # noqa: E402
from wav2lip_trt.random_weights import write_random_checkpoints, write_random_scoring_checkpoints  # noqa: E402
from wav2lip_trt.samples import write_talking_clip  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "score_cost_cpu.json"
GOAL = 0.10  # the goal: scoring adds under 10 % to the run's time on this CPU


def infer(args: list[str], out: Path) -> tuple[float, dict]:
    m = run_measured([sys.executable, "-m", "wav2lip_trt", "infer", "-q", "--device", "cpu", "--no-cache",
                      "--json", str(out), *args])
    if m.returncode != 0:
        raise RuntimeError(m.stderr)
    return m.seconds, json.loads(out.read_text())


def score_seconds(report: dict) -> float:
    return sum(row["seconds"] for row in report.get("stages", []) if row.get("stage") == "score")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--size", default="360x640", help="HxW of the generated clip")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="torch,onnxruntime")
    parser.add_argument("--kinds", default="box,s3fd")
    parser.add_argument("--modes", default="expert,expert+disc",
                        help="scored modes (each against plain): expert, expert+disc, and /K for --score-every K")
    parser.add_argument("--merge", action="store_true", help="replace only these rows (kind, backend) in --out")
    parser.add_argument("--out", type=Path, default=RESULTS)
    opts = parser.parse_args()
    height, width = (int(v) for v in opts.size.split("x"))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="score-cost-") as tmp:
        work = Path(tmp)
        wav2lip, s3fd = write_random_checkpoints(work / "ck")
        expert, _, disc = write_random_scoring_checkpoints(work / "ck")
        face, audio = write_talking_clip(work / "clip", seconds=opts.seconds, width=width, height=height, seed=3)
        side = min(height, width) // 2
        box = [str(v) for v in ((height - side) // 2, (height + side) // 2, (width - side) // 2, (width + side) // 2)]
        nets = {"expert": ["--expert-checkpoint", str(expert)],
                "expert+disc": ["--expert-checkpoint", str(expert), "--disc-checkpoint", str(disc)]}
        modes = {"plain": []}
        for mode in opts.modes.split(","):
            name, _, every = mode.partition("/")
            modes[mode] = ["--score", *nets[name], *(["--score-every", every] if every else [])]
        results = []
        for kind in opts.kinds.split(","):
            for backend in opts.backends.split(","):
                base = ["--checkpoint_path", str(wav2lip), "--s3fd-checkpoint", str(s3fd), "--face", str(face),
                        "--audio", str(audio), "--outfile", str(work / "out.mp4"), "--backend", backend]
                if kind == "box":
                    base += ["--box", *box]
                runs: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
                infer(base + modes[list(modes)[-1]], work / "warm.json")  # page cache, ONNX Runtime's first load
                for _ in range(opts.repeats):
                    for mode, extra in modes.items():
                        seconds, report = infer(base + extra, work / f"{mode}.json")
                        runs[mode].append((seconds, score_seconds(report)))
                        print(f"{kind} {backend} {mode}: {seconds:.2f} s (scoring {runs[mode][-1][1]:.2f} s)",
                              file=sys.stderr)
                row = {"kind": kind, "backend": backend, "frames": report["frames"],
                       "plain_seconds_median": round(statistics.median(s for s, _ in runs["plain"]), 3)}
                for mode in list(modes)[1:]:
                    costs = [(s - p) / p for (s, _), (p, _) in zip(runs[mode], runs["plain"])]
                    row[mode] = {
                        "seconds_median": round(statistics.median(s for s, _ in runs[mode]), 3),
                        "cost_median": round(statistics.median(costs), 4),
                        "costs": [round(c, 4) for c in costs],
                        "scorer_seconds_median": round(statistics.median(t for _, t in runs[mode]), 3),
                        "scorer_share_of_run": round(statistics.median(t / s for s, t in runs[mode]), 4),
                        "meets_goal": statistics.median(costs) < GOAL,
                    }
                results.append(row)
    data = {
        "benchmark": "infer --score cost on the CPU (whole processes, random-weight checkpoints)",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_info(),
        "clip": {"seconds": opts.seconds, "size": f"{width}x{height}", "fps": 25.0, "box": box},
        "goal": f"scoring adds under {GOAL:.0%} to the run's time",
        "method": "plain / --score expert / --score expert+disc alternated per repeat; cost = median of per-repeat "
                  "(scored - plain) / plain; scorer seconds = the run's 'score' stage",
        "repeats": opts.repeats,
        "results": results,
        "wall_seconds": round(time.time() - started, 1),
    }
    if opts.merge and opts.out.is_file():  # this run's rows replace those of the same kind and backend
        old = json.loads(opts.out.read_text())
        mine = {(r["kind"], r["backend"]) for r in results}
        rows = [r for r in old["results"] if (r["kind"], r["backend"]) not in mine] + results
        data["results"] = sorted(rows, key=lambda r: (r["kind"], r["backend"]))
        data["runs"] = old.get("runs", [{k: old[k] for k in ("date", "repeats", "wall_seconds") if k in old}])
        data["runs"].append({"date": data["date"], "rows": sorted(map(list, mine)), "modes": opts.modes,
                             "repeats": opts.repeats, "wall_seconds": data["wall_seconds"]})
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(data, indent=2) + "\n")
    for row in data["results"]:
        costs = "; ".join(f"{m} +{v['cost_median']:.1%}" for m, v in row.items() if isinstance(v, dict))
        print(f"{row['kind']:>4} {row['backend']:<12} plain {row['plain_seconds_median']:.2f} s; {costs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
