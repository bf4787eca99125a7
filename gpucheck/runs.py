"""The steps that run the pipeline (``infer`` in child processes) and judge what came out: asynchronous
determinism, CSAN with its positive control, parity on CUDA, the sync debugger, and the timings."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wav2lip_trt.execution.handoff import STALL_ENV

from .environment import UtilSampler
from .logs import last_line
from .runner import ProcResult, StepContext, run_logged
from .staging import child_env
from .steps import Config
from .verdicts import (PASSED, Verdict, compare_dumps, failed, hash_frames, judge_csan, judge_determinism,
                       judge_parity, judge_syncs, not_run, passed)

WAYS = {  # the three ways of the determinism step: the same run, hand-offs timed differently
    "normal": {},
    "blocking": {"CUDA_LAUNCH_BLOCKING": "1"},
    "stalled": {STALL_ENV: "2000"},  # 2 ms of GPU sleep before every hand-off, one ring slot, one pool buffer
}
DETERMINISTIC = {"GPU_CHECK_DETERMINISTIC": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # same kernels, same bits
TIMED_BATCHES = ["--wav2lip_batch_size", "16"]  # a 60-frame clip in 4 batches: a steady state to measure
SMALL_BATCHES = ["--face_det_batch_size", "4", "--wav2lip_batch_size", "8"]  # buffers reused many times


def infer_args(ctx: StepContext, cfg: Config, name: str, clip: str, audio: str, precision: str,
               extra: Sequence[str] = ()) -> tuple[list[str], Path]:
    """``infer`` arguments for one run and the path of its JSON report (in the results folder)."""
    wav2lip, s3fd = ctx.state["checkpoints"]
    report = ctx.out / f"{name}.json"
    (ctx.work / "outputs").mkdir(parents=True, exist_ok=True)
    on_cpu = precision == "cpu"
    args = ["infer", "--checkpoint_path", wav2lip, "--s3fd-checkpoint", s3fd, "--face", ctx.state["clips"][clip],
            "--audio", ctx.state["audio"][audio], "--outfile", ctx.work / "outputs" / f"{name}.mp4",
            "--device", "cpu" if on_cpu else cfg.device, "--precision", "fp32" if on_cpu else cfg.precision(precision),
            "--backend", "torch", "--on-missing-face", "previous", "--json", report, "-q"]
    return [str(a) for a in args] + [str(a) for a in extra], report


def score_args(ctx: StepContext) -> list[str]:
    expert, disc = ctx.state["scoring"]
    return ["--score", "--expert-checkpoint", str(expert), "--disc-checkpoint", str(disc)]


def score_summary(report: dict[str, Any]) -> dict[str, Any]:
    expert, quality = report.get("expert") or {}, report.get("visual_quality") or {}
    sims = [v for v in expert.get("similarity") or [] if v is not None]
    return {"similarity_mean": sum(sims) / len(sims) if sims else None, "sync_loss": expert.get("sync_loss"),
            "av_offset": expert.get("av_offset"), "quality_mean": quality.get("mean")}


def run_infer(ctx: StepContext, name: str, args: list[str], report: Path, *, mode: str = "infer",
              env: dict[str, str] | None = None, timeout_s: float | None = None,
              sampler: UtilSampler | None = None) -> tuple[ProcResult, dict[str, Any] | None]:
    """One child run; the parsed JSON report, or None when the run failed."""
    cmd = [sys.executable, "-m", "gpucheck.child", mode, "--", *args]
    limit = min(timeout_s if timeout_s is not None else ctx.remaining(), ctx.remaining())
    log = ctx.out / f"{name}.log"
    if sampler is not None:
        with sampler:
            proc = run_logged(cmd, log, limit, env=child_env(**(env or {})))
    else:
        proc = run_logged(cmd, log, limit, env=child_env(**(env or {})))
    ctx.add_file(log)
    data = None
    if proc.returncode == 0 and report.is_file():
        data = json.loads(report.read_text())
        ctx.add_file(report)
    return proc, data


def run_failure(name: str, proc: ProcResult) -> str:
    if proc.timed_out:
        return f"{name} timed out after {proc.seconds:.0f} s"
    return f"{name} exited {proc.returncode}: {last_line(proc.text)}"


def step_determinism(cfg: Config):  # noqa: ANN201
    """The same 1080p run without dumps, three ways (normal, CUDA_LAUNCH_BLOCKING=1, race windows widened);
    the saved frames must be bit-identical, and the scores equal, on FP32 and FP16, with --score."""

    def run(ctx: StepContext) -> Verdict:
        precisions = ("fp32",) if cfg.rehearsal else ("fp32", "fp16")
        total = len(precisions) * len(WAYS)
        verdicts, scores = [], {}
        for p in precisions:
            hashes = {}
            for way, env in WAYS.items():
                name = f"determinism-{p}-{way}"
                frames = ctx.work / "frames" / name
                args, report = infer_args(ctx, cfg, name, "1080p", "short", p,
                                          ["--save-frames", str(frames), *score_args(ctx)])
                left = total - len(scores)
                proc, data = run_infer(ctx, name, args, report, env={**DETERMINISTIC, **env},
                                       timeout_s=ctx.remaining() / left)
                if data is None:
                    return failed(run_failure(name, proc))
                hashes[way] = hash_frames(frames)
                scores[name] = score_summary(data)
            verdict = judge_determinism(hashes)
            ctx.details[f"frames_{p}"] = verdict.reason
            verdicts.append((p, verdict))
            ref = next(v for k, v in scores.items() if k.startswith(f"determinism-{p}-"))
            differ = [k for k, v in scores.items() if k.startswith(f"determinism-{p}-") and v != ref]
            if differ:
                verdicts.append((p, failed(f"--score differs between the ways: {', '.join(differ)}")))
        ctx.details["scores"] = scores
        bad = [f"{p}: {v.reason}" for p, v in verdicts if v.status != PASSED]
        if any(v.status == "failed" for _, v in verdicts):
            return failed("; ".join(bad), sum(v.work for _, v in verdicts))
        if bad:
            return not_run("; ".join(bad))
        return passed("; ".join(f"{p}: {v.reason}" for p, v in verdicts) + "; --score equal",
                      sum(v.work for _, v in verdicts))
    return run


def step_csan(cfg: Config):  # noqa: ANN201
    """CUDA Sanitizer over the pipeline's threads, FP32 and FP16, after a positive control it must catch."""

    def run(ctx: StepContext) -> Verdict:
        if cfg.rehearsal:
            return not_run("rehearsal: CSAN checks CUDA streams only")
        control_log = ctx.out / "csan-control.log"
        control = run_logged([sys.executable, "-m", "gpucheck.child", "csan-control"], control_log,
                             min(60.0, ctx.remaining()), env=child_env())
        ctx.add_file(control_log)
        texts = {}
        for i, p in enumerate(("fp32", "fp16")):
            name = f"csan-{p}"
            args, report = infer_args(ctx, cfg, name, "small", "short", p, [*SMALL_BATCHES, *score_args(ctx)])
            proc, _ = run_infer(ctx, name, args, report, mode="sanitizer", timeout_s=ctx.remaining() / (2 - i))
            texts[name] = proc.text
        return judge_csan(control.text, texts)
    return run


def step_parity(cfg: Config):  # noqa: ANN201
    """CPU FP32 against CUDA FP32 (TF32 off) and CUDA FP16 on the small clip, judged frame by frame."""

    def run(ctx: StepContext) -> Verdict:
        runs = {"parity-cpu-fp32": "cpu", "parity-cuda-fp32": "fp32", "parity-cuda-fp16": "fp16"}
        dumps, scores = {}, {}
        for i, (name, precision) in enumerate(runs.items()):
            dump = ctx.work / "dumps" / name
            args, report = infer_args(ctx, cfg, name, "small", "short", precision,
                                      ["--dump-intermediates", str(dump), *score_args(ctx)])
            proc, data = run_infer(ctx, name, args, report, env={"GPU_CHECK_NO_TF32": "1"},
                                   timeout_s=ctx.remaining() / (len(runs) - i))
            if data is None:
                return failed(run_failure(name, proc))
            dumps[name], scores[name] = dump, score_summary(data)
        ref = "parity-cpu-fp32"
        problems, frames = [], 0
        ctx.markdown += ["| run | detected boxes equal | final boxes equal | max / mean diff (same boxes) | PSNR |",
                         "|---|---|---|---|---|"]
        for name, precision in (("parity-cuda-fp32", "fp32"), ("parity-cuda-fp16", "fp16")):
            comparison = compare_dumps(dumps[ref], dumps[name])
            problems += judge_parity(name, precision, comparison, (scores[ref], scores[name]))
            ctx.details[name] = {k: v for k, v in comparison.items() if k != "det_box_rows"}
            f, det, box = comparison.get("frames") or {}, comparison.get("det_boxes") or {}, comparison.get("boxes") or {}
            frames += f.get("count", 0)
            if "count" in f:
                ctx.markdown.append(f"| {name} | {det.get('equal_fraction', 0):.1%} | {box.get('equal_fraction', 0):.1%} | "
                                    f"{f['same_box_max_diff']} / {f['same_box_mean_diff']:.4f} | {f['psnr_db'] or 'identical'} |")
        ctx.details["scores"] = scores
        if problems:
            return failed("; ".join(problems), frames)
        devices = "CPU FP32 (rehearsal) twice" if cfg.rehearsal else "CUDA FP32 (TF32 off) and FP16"
        return passed(f"{devices} within their limits of the CPU FP32 run on {frames // 2} frames", frames)
    return run


def step_sync(cfg: Config):  # noqa: ANN201
    """Synchronisations on two clip lengths under torch.cuda.set_sync_debug_mode("warn"): must not grow."""

    def run(ctx: StepContext) -> Verdict:
        got = {}
        for i, audio in enumerate(("short", "long")):
            name = f"sync-{audio}"
            args, report = infer_args(ctx, cfg, name, "720p", audio, "fp16", [*SMALL_BATCHES, *score_args(ctx)])
            proc, data = run_infer(ctx, name, args, report, mode="sync", timeout_s=ctx.remaining() / (2 - i))
            if data is None:
                return failed(run_failure(name, proc))
            got[audio] = (proc.text, int(data["frames"]))
        verdict = judge_syncs(got["short"], got["long"])
        growth = verdict.details.get("growth") or {}
        if growth:
            ctx.markdown += ["| site | extra syncs on the longer clip | designed |", "|---|---|---|"]
            allowed = verdict.details.get("allowed") or {}
            ctx.markdown += [f"| `{site}` | {n} | {'yes' if site in allowed else 'no'} |" for site, n in growth.items()]
        return verdict
    return run


def timing_runs(cfg: Config) -> list[tuple[str, str, str, list[str], str]]:
    """(name, clip, precision, extra flags, detection cache folder) of the measured runs, in order."""
    if cfg.rehearsal:  # the flow of every kind of run, not every size
        return [("time-1080p-fp16-miss", "1080p", "fp16", [], "a"), ("time-1080p-fp16-hit", "1080p", "fp16", [], "a"),
                ("time-1080p-fp16-mem1024", "1080p", "fp16", ["--frame-memory", "1024"], "a")]
    return [("time-1080p-fp16-miss", "1080p", "fp16", [], "a"), ("time-1080p-fp16-hit", "1080p", "fp16", [], "a"),
            ("time-1080p-fp32", "1080p", "fp32", [], "a"), ("time-720p-fp16", "720p", "fp16", [], "b"),
            ("time-1080p-fp16-mem1024", "1080p", "fp16", ["--frame-memory", "1024"], "a"),
            ("time-4k-fp16", "4k", "fp16", [], "c")]


def step_timings(cfg: Config):  # noqa: ANN201
    """GPU time per stage (CUDA events), steady-state fps apart from start-up, memory peaks, per run."""

    def run(ctx: StepContext) -> Verdict:
        runs, rows, not_done = timing_runs(cfg), [], []
        for i, (name, clip, precision, extra, cache) in enumerate(runs):
            if ctx.remaining() < 8:
                not_done.append(f"{name} (out of time)")
                continue
            timing = ctx.out / f"{name}.timing.json"
            args, report = infer_args(ctx, cfg, name, clip, "long", precision,
                                      [*extra, *TIMED_BATCHES, "--cache-dir", str(ctx.work / f"cache-{cache}")])
            proc, data = run_infer(ctx, name, args, report, env={"GPU_CHECK_TIMING": str(timing)},
                                   timeout_s=ctx.remaining() / (len(runs) - i), sampler=UtilSampler())
            if data is None or not timing.is_file():
                return failed(run_failure(name, proc), len(rows))
            ctx.add_file(timing)
            rows.append({"run": name, "report": data, "timing": json.loads(timing.read_text())})
        ctx.details["runs"] = rows
        ctx.markdown += timing_table(rows)
        measured = [r for r in rows if r["timing"].get("steady_fps")]
        return passed(f"{len(measured)} runs measured: " + ", ".join(f"{r['run']} {r['timing']['steady_fps']} fps steady"
                                                                      for r in measured), len(measured),
                      not_run=not_done)
    return run


def timing_table(rows: list[dict[str, Any]]) -> list[str]:
    mib = 2**20
    head = ["run", "frames", "detection", "fps end to end", "fps steady", "to first batch s", "host busy s (stage)",
            "GPU s (stage, CUDA events)", "peak reserved MiB", "pinned MiB", "peak RSS MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rep, t = r["report"], r["timing"]
        host = ", ".join(f"{s['stage']} {s['seconds']:.2f}" for s in rep.get("stages", []))
        gpu = ", ".join(f"{k} {v:.3f}" for k, v in (t.get("gpu_stage_seconds") or {}).items()) or "–"
        cells = [r["run"], rep.get("frames"), rep.get("detection"), rep.get("frames_per_second"), t.get("steady_fps"),
                 t.get("first_batch_s"), host, gpu] + [
            f"{t[k] / mib:.0f}" if t.get(k) is not None else "–"
            for k in ("max_memory_reserved", "pinned_host_bytes", "peak_rss_bytes")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines + ["", "Steady fps: the frames written after the first batch over the time from its end to the last "
                        "batch's (load, autotuning, JIT and graph capture are in 'to first batch'); the runs use "
                        "--wav2lip_batch_size 16 so that a 60-frame clip has four batches. GPU s: CUDA events around "
                        "each stage's launches on the compute stream; host busy s: the host's time in the stage "
                        "(enqueue, waits)."]
