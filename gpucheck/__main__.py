"""``python3 -m gpucheck``: plan the steps of one GPU-machine run, run them within the budget, write the summary.

Run 1 (``--run check``, the default) runs every required step within DEFAULT_BUDGET_S; run 2
(``--run rtx``) the TensorRT-RTX experiment within RTX_BUDGET_S. The caps of a run's steps add up to
at most its budget, so no required step is skipped for time on a machine as fast as planned; one that
is, is NOT RUN and named on the summary's first line. The exit status is 1 when a step failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import REPO
from .runner import LIVE, Runner, Step, kill_group
from .verdicts import FAILED, NOT_RUN, PASSED

NO_GPU_LINE = "gpu-check: no CUDA GPU visible to torch; nothing to check (make gpu-rehearse checks the check on the CPU)"
DEFAULT_BUDGET_S = 510.0  # run 1: with the unpacking, start-up and the summary, within 9 minutes
RTX_BUDGET_S = 200.0  # run 2: within 4 minutes
# Steps that need CUDA hardware: NOT RUN in a rehearsal, which passes when every other step passed.
NEEDS_A_GPU = ("pytest-gpu", "csan", "compute-sanitizer", "sync-debug", "dali", "tensorrt-rtx")
REHEARSAL_SLOWDOWN = 6  # a 2-core CPU runs the tiny clips about this much slower than the GPU runs the real ones


def plan(run: str, rehearsal: bool, env_out: dict[str, Any]) -> list[Step]:
    """The steps of one run, in order: the most telling first, so that a slow machine drops the least."""
    from . import live, runs, steps

    cfg = steps.Config(rehearsal=rehearsal)
    setup = ("env", "deps", "prepare")
    head = [Step("env", "Environment", steps.step_env(cfg, env_out), 10, 1),
            Step("deps", "Runtime dependencies", steps.step_deps(cfg), 15, 1, ("env",)),
            Step("prepare", "Generated media and checkpoints", steps.step_prepare(cfg), 40, 5, ("deps",))]
    if run == "rtx":
        planned = head + [Step("tensorrt-rtx", "TensorRT-RTX on this GPU (experiment)", steps.step_rtx(cfg), 130, 30,
                               ("env",))]
    else:
        planned = head + [
            Step("determinism", "Asynchronous determinism", runs.step_determinism(cfg), 85, 30, setup),
            Step("csan", "CUDA Sanitizer with a positive control", runs.step_csan(cfg), 45, 20, setup),
            Step("parity", "Parity: CPU FP32 vs CUDA FP32 (TF32 off) and FP16", runs.step_parity(cfg), 40, 15, setup),
            Step("sync-debug", "Synchronisations per frame", runs.step_sync(cfg), 35, 15, setup),
            Step("pytest-gpu", "pytest -m gpu", steps.step_pytest(cfg), 65, 20, ("env",)),
            Step("compute-sanitizer", "compute-sanitizer on the Triton kernels", steps.step_compute_sanitizer(cfg), 60, 20,
                 ("env",)),
            Step("timings", "Timings: GPU time, steady fps, memory", runs.step_timings(cfg), 70, 15, setup),
            Step("live", "Live lip-sync: 1080p at real time, concurrent 720p streams", live.step_live(cfg), 30, 15,
                 setup),
            Step("dali", "DALI decode against OpenCV", steps.step_dali(cfg), 15, 5, ("env",), required=False),
        ]
    if not rehearsal:
        return planned
    return [replace(s, timeout_s=s.timeout_s * REHEARSAL_SLOWDOWN, min_s=s.min_s * REHEARSAL_SLOWDOWN) for s in planned]


def with_prerequisites(steps: Sequence[Step], selected: set[str]) -> set[str]:
    """The selected steps and, transitively, the steps they need."""
    needs = {s.name: s.needs for s in steps}
    wanted, todo = set(), list(selected)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo += needs.get(name, ())
    return wanted


def budget_for(run: str, rehearsal: bool = False) -> float:
    return (RTX_BUDGET_S if run == "rtx" else DEFAULT_BUDGET_S) * (REHEARSAL_SLOWDOWN if rehearsal else 1)


def rehearsal_ok(results: Sequence[Any]) -> bool:
    """A rehearsal passes when every step passed, except the GPU-only ones, which must be NOT RUN."""
    return all(r.status == (NOT_RUN if r.name in NEEDS_A_GPU else PASSED) for r in results)


def gpu_visible() -> tuple[bool, str]:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return False, f"torch does not import: {type(exc).__name__}: {exc}"
    try:
        return bool(torch.cuda.is_available()), ""
    except Exception as exc:  # noqa: BLE001
        return False, f"{type(exc).__name__}: {exc}"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m gpucheck", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/gpu-check-<UTC>)")
    parser.add_argument("--run", choices=("check", "rtx"), default="check", help="run 1 (the check) or 2 (TensorRT-RTX)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the steps [the run's budget]")
    parser.add_argument("--steps", default="", help="comma-separated steps to run (their prerequisites run too)")
    parser.add_argument("--keep-work", action="store_true", help="keep the generated media, outputs and dumps")
    parser.add_argument("--rehearse", action="store_true", help="every step's flow on the CPU at tiny sizes")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if not args.rehearse:
        visible, why = gpu_visible()
        if not visible:
            print(NO_GPU_LINE if not why else f"{NO_GPU_LINE} ({why})")
            return 0
    from .environment import utc_now
    from .report import write_summary

    env: dict[str, Any] = {}
    steps = plan(args.run, args.rehearse, env)
    names = [s.name for s in steps]
    selected = {s.strip() for s in args.steps.split(",") if s.strip()}
    if selected - set(names):
        print(f"gpu-check: unknown step(s) {', '.join(sorted(selected - set(names)))}; choose from {', '.join(names)}",
              file=sys.stderr)
        return 2
    budget = args.budget if args.budget is not None else budget_for(args.run, args.rehearse)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = (args.out or REPO / "benchmarks" / "results" / f"gpu-check-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-work-"))
    started, t0 = utc_now(), time.monotonic()
    runner = Runner(out, work, budget)
    print(f"gpu-check: run {args.run}, results in {out}; budget {budget:.0f} s"
          + (" (REHEARSAL on the CPU)" if args.rehearse else ""), flush=True)
    wanted = with_prerequisites(steps, selected) if selected else set(names)
    try:
        for step in steps:
            if step.name in wanted:
                runner.run(step)
            else:
                runner.not_run(step, "not selected (--steps)")
    finally:
        for proc in list(LIVE):  # only after an interruption: every step waits for its own children
            kill_group(proc)
        seconds = round(time.monotonic() - t0, 1)
        doc = write_summary(out, runner.results, env or {"rehearsal": args.rehearse}, budget_s=budget,
                            started_utc=started, seconds=seconds)
        if args.keep_work:
            print(f"gpu-check: work files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(doc["headline"], flush=True)
    print(f"gpu-check: {seconds:.0f} s; see {out / 'summary.md'}", flush=True)
    if args.rehearse:
        ok = rehearsal_ok([r for r in runner.results if r.name in wanted])
        print(f"gpu-check rehearsal: {'PASSED' if ok else 'FAILED'} (every step's flow on the CPU)", flush=True)
        return 0 if ok else 1
    return 1 if any(r.status == FAILED for r in runner.results) else 0


if __name__ == "__main__":
    sys.exit(main())
