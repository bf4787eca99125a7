"""scripts/gpu_check.py without a GPU: the no-GPU exit, the summary files, the time budget, log parsing."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


gc = _load()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _step(name: str, status: str, summary: str = "", **kw) -> "gc.StepResult":
    return gc.StepResult(name=name, title=name.title(), status=status, summary=summary, **kw)


# -- no GPU ---------------------------------------------------------------------------------


def test_without_a_gpu_it_prints_one_line_exits_0_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU even on a machine that has one
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [gc.NO_GPU_LINE]
    assert proc.stderr == ""
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_makefile_target_runs_the_script_without_the_venv() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(["make", "-n", "gpu-check", "OUT=/tmp/x"], capture_output=True, text=True, cwd=REPO,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "scripts/gpu_check.py --out /tmp/x" in proc.stdout
    assert "/tmp/site" in proc.stdout
    assert ".venv" not in proc.stdout and "pip" not in proc.stdout


# -- summary files --------------------------------------------------------------------------


def _throughput_step() -> "gc.StepResult":
    report = {"frames": 125, "width": 1920, "height": 1080, "frames_per_second": 61.234, "realtime_factor": 2.45,
              "seconds": 2.041, "stages": [
                  {"stage": "detect", "seconds": 0.5, "items": 125, "items_per_second": 250.0},
                  {"stage": "encode", "seconds": 1.0, "items": 125, "items_per_second": 125.0},
                  {"stage": "load", "seconds": 3.25, "items": 0, "items_per_second": 0.0}]}
    busy = {"method": "nvidia-smi -lms 100", "busy_fraction": 0.42, "busy_fraction_active": 0.61, "samples": 20}
    return _step("fps-fp16-1080p", "passed", "125 frames", seconds=9.5,
                 details={"kind": "throughput", "report": report, "gpu_busy": busy}, files=["fps-fp16-1080p.json"])


def test_write_summary_reports_every_step_and_the_environment(tmp_path: Path) -> None:
    steps = [
        _step("env", "passed", "NVIDIA H200, torch 2.11", seconds=1.25),
        _step("parity", "failed", "boxes equal in 50% | of frames", seconds=30.0,
              markdown=["| run | x |", "|---|---|", "| a | 1 |"]),
        _throughput_step(),
        _step("kernels-bench", "skipped", "out of time: 3 s of the 450 s budget left"),
    ]
    env = {"torch": "2.11.0+cu130", "cuda": "13.0", "cudnn": 91000, "python": "3.12.3",
           "gpu": {"name": "NVIDIA H200", "capability": "9.0", "memory_bytes": 150 * 2**30, "count": 1},
           "versions": {"triton": "3.5.0", "tqdm": None}, "util_method": "nvidia-smi -lms 100", "driver": "580.1"}
    doc = gc.write_summary(tmp_path, steps, env, budget_s=450, started_utc="2026-01-01T00:00:00Z", seconds=41.0)

    data = json.loads((tmp_path / "summary.json").read_text())
    assert data == json.loads(json.dumps(doc, default=str))
    assert data["status"] == "failed"
    assert data["counts"] == {"passed": 2, "failed": 1, "skipped": 1}
    assert [s["name"] for s in data["steps"]] == ["env", "parity", "fps-fp16-1080p", "kernels-bench"]
    assert data["steps"][3]["summary"].startswith("out of time")
    assert data["steps"][2]["details"]["gpu_busy"]["busy_fraction"] == 0.42
    assert data["env"]["gpu"]["name"] == "NVIDIA H200" and data["budget_s"] == 450

    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("# gpu-check: FAILED\n")
    assert "2 passed, 1 failed, 1 skipped" in md
    assert "| GPU | NVIDIA H200 (compute 9.0, 150 GiB), 1 visible |" in md
    assert "| tqdm | not installed |" in md
    assert "| parity | failed | 30.0 | boxes equal in 50% \\| of frames |" in md  # pipes escaped
    assert "| kernels-bench | skipped | 0.0 | out of time: 3 s of the 450 s budget left |" in md
    assert "## Throughput" in md
    head = next(line for line in md.splitlines() if line.startswith("| run | frames"))
    assert "| detect /s | encode /s | load /s |" in head
    row = next(line for line in md.splitlines() if line.startswith("| fps-fp16-1080p | 125"))
    assert "| 61.2 |" in row and "42% / 61%" in row and row.endswith("| 250.0 | 125.0 | 3.25 s |")
    assert "## Parity\n\n| run | x |" in md  # a step's own markdown gets its section


def test_summary_passes_when_nothing_failed(tmp_path: Path) -> None:
    doc = gc.write_summary(tmp_path, [_step("env", "passed"), _step("fps", "skipped", "needs step 'deps'")], {})
    assert doc["status"] == "passed"
    assert (tmp_path / "summary.md").read_text().startswith("# gpu-check: PASSED")
    assert "## Throughput" not in (tmp_path / "summary.md").read_text()


# -- deadline and step outcomes -------------------------------------------------------------


def test_a_step_that_would_start_past_the_budget_is_skipped_out_of_time(tmp_path: Path) -> None:
    clock = FakeClock()
    runner = gc.Runner(tmp_path, tmp_path, budget_s=10, clock=clock, echo=lambda line: None)
    seen = {}

    def slow(ctx) -> None:
        seen["timeout"] = ctx.timeout_s
        clock.now += 8  # uses 8 of the 10 s
        ctx.summary = "done"

    def never(ctx) -> None:
        raise AssertionError("must not run")

    first = runner.run("first", "First", slow, timeout_s=60, min_s=1)
    assert first.status == "passed" and first.summary == "done"
    assert seen["timeout"] == 10  # capped to what is left of the budget
    second = runner.run("second", "Second", never, timeout_s=60, min_s=5)
    assert second.status == "skipped"
    assert second.summary.startswith("out of time: 2 s of the 10 s budget left")
    third = runner.run("third", "Third", lambda ctx: None, timeout_s=60, min_s=1)
    assert third.status == "passed"  # 2 s left is enough for it
    clock.now += 5
    fourth = runner.run("fourth", "Fourth", never, timeout_s=1, min_s=0.5)
    assert fourth.status == "skipped" and "out of time" in fourth.summary


def test_failures_do_not_stop_later_steps_and_prerequisites_are_honoured(tmp_path: Path) -> None:
    runner = gc.Runner(tmp_path, tmp_path, budget_s=60, echo=lambda line: None)

    def fails(ctx) -> None:
        raise gc.StepFailed("found a problem")

    def crashes(ctx) -> None:
        raise ZeroDivisionError("boom")

    def skips(ctx) -> None:
        raise gc.StepSkipped("nothing to do here")

    assert runner.run("a", "A", fails, timeout_s=5).status == "failed"
    crashed = runner.run("b", "B", crashes, timeout_s=5)
    assert crashed.status == "failed" and crashed.summary == "ZeroDivisionError: boom"
    assert "Traceback" in crashed.details["traceback"]
    assert runner.run("c", "C", skips, timeout_s=5).summary == "nothing to do here"
    dependent = runner.run("d", "D", lambda ctx: None, timeout_s=5, needs=("a",))
    assert dependent.status == "skipped" and dependent.summary == "needs step 'a', which failed"
    assert runner.run("e", "E", lambda ctx: None, timeout_s=5).status == "passed"
    assert gc.overall_status(runner.results) == "failed"


def test_a_step_that_overruns_its_timeout_is_failed_and_left_behind(tmp_path: Path) -> None:
    runner = gc.Runner(tmp_path, tmp_path, budget_s=60, grace_s=0.05, echo=lambda line: None)
    start = time.monotonic()
    result = runner.run("hang", "Hang", lambda ctx: time.sleep(2), timeout_s=0.1)
    assert time.monotonic() - start < 1.5
    assert result.status == "failed" and result.summary.startswith("timed out after")


def test_main_with_no_budget_skips_every_step_and_still_writes_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "res"
    rc = gc.main(["--rehearse", "--budget", "0", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in data["steps"]] == list(gc.STEP_NAMES)
    assert {s["status"] for s in data["steps"]} == {"skipped"}
    assert data["steps"][0]["summary"].startswith("out of time")  # env: the budget was spent before it
    assert all("out of time" in s["summary"] or s["summary"].startswith("needs step") for s in data["steps"])


def test_run_logged_kills_a_child_that_overruns(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    start = time.monotonic()
    proc = gc.run_logged([sys.executable, "-c", "print('hi', flush=True); import time; time.sleep(30)"], log, 1.0)
    assert time.monotonic() - start < 10
    assert proc.timed_out and proc.returncode is None
    assert "hi" in log.read_text() and "killed after" in log.read_text()


def test_long_logs_keep_head_and_tail(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_bytes(b"H" * 100 + b"M" * 1000 + b"T" * 50)
    gc.cap_log(log, head=100, tail=50)
    text = log.read_text()
    assert text.startswith("H" * 100) and text.endswith("T" * 50) and "cut 1000 bytes" in text
    assert "M" not in text


# -- parsing ---------------------------------------------------------------------------------

CSAN_SAMPLE = """gpu-check child: CUDA sanitizer enabled
============================
CSAN detected a possible data race on tensor with data pointer 139800000000
Access by stream 94000001 during kernel:
aten::copy_(Tensor(a!) self, Tensor src, bool non_blocking=False) -> Tensor(a!)
writing to argument(s) self, and to the output
With stack trace:
  File "wav2lip_trt/frame_ops.py", line 10, in upload

Previous access by stream 0 during kernel:
aten::index_select(Tensor self, int dim, Tensor index) -> Tensor
reading from argument(s) self
With stack trace:
  File "wav2lip_trt/pipeline.py", line 99, in detect

Tensor was allocated with stack trace:
  File "wav2lip_trt/decode.py", line 5, in ring
Traceback (most recent call last):
torch.cuda._sanitizer.CUDASanitizerErrors: detected 1 errors
gpu-check child: sanitizer covered 3 worker threads
"""


def test_sanitizer_log_parsing() -> None:
    parsed = gc.parse_sanitizer_log(CSAN_SAMPLE)
    assert parsed["reports"] == 1
    assert parsed["kernels"] == {"aten::copy_(Tensor(a!)": 1}
    assert parsed["aborted_by_sanitizer"] is True
    assert parsed["worker_threads_covered"] == 3
    clean = gc.parse_sanitizer_log("gpu-check child: CUDA sanitizer enabled\n"
                                   "gpu-check child: sanitizer covered 2 worker threads\n")
    assert clean == {"reports": 0, "kernels": {}, "aborted_by_sanitizer": False, "worker_threads_covered": 2}


def test_sync_warning_parsing_counts_every_warning_by_site() -> None:
    msg = "UserWarning: called a synchronizing CUDA operation (Triggered internally at /pytorch/c10/cuda/X.cpp:1.)"
    text = "\n".join([
        f"{REPO}/wav2lip_trt/frame_ops.py:120: {msg}",
        "  return frame.cpu().numpy()",
        f"{REPO}/wav2lip_trt/frame_ops.py:120: {msg}",
        "  return frame.cpu().numpy()",
        f"/usr/lib/python3/site-packages/torch/nn/functional.py:7: {msg}",
        "  x = y.item()",
        "some other line",
    ])
    parsed = gc.parse_sync_warnings(text, repo=REPO)
    assert parsed["warnings"] == 3
    assert parsed["sites"] == {"wav2lip_trt/frame_ops.py:120": 2,
                               "/usr/lib/python3/site-packages/torch/nn/functional.py:7": 1}
    assert gc.parse_sync_warnings("no warnings at all\n") == {"warnings": 0, "sites": {}}
    bare = gc.parse_sync_warnings("[W] called a synchronizing CUDA operation\n")
    assert bare == {"warnings": 1, "sites": {"(no source line)": 1}}


def test_utilisation_parsing_and_busy_fraction() -> None:
    samples = gc.parse_nvidia_smi("0, 500\n0, 500\n80, 9000\n[N/A], 1\n100, 9100\n0, 9100\n")
    assert samples == [(0.0, 500.0), (0.0, 500.0), (80.0, 9000.0), (100.0, 9100.0), (0.0, 9100.0)]
    stats = gc.busy_stats([u for u, _ in samples], [m for _, m in samples])
    assert stats["samples"] == 5
    assert stats["busy_fraction"] == pytest.approx(0.36)
    assert stats["busy_fraction_active"] == pytest.approx(0.9)  # from the first to the last busy sample
    assert stats["max_percent"] == 100.0 and stats["peak_memory_used_mib"] == 9100.0
    assert gc.busy_stats([])["busy_fraction"] is None
    assert gc.busy_stats([0, 0])["busy_fraction_active"] is None


def test_junit_counts(tmp_path: Path) -> None:
    xml = tmp_path / "j.xml"
    xml.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="7" failures="1" errors="1" '
                   'skipped="2"></testsuite></testsuites>')
    assert gc.parse_junit(xml) == {"tests": 7, "failures": 1, "errors": 1, "skipped": 2, "passed": 3}


def test_dump_comparison(tmp_path: Path) -> None:
    ref, other = tmp_path / "ref", tmp_path / "other"
    ref.mkdir()
    other.mkdir()
    boxes = np.array([[10, 50, 20, 60]] * 4, dtype=np.int64)
    moved = boxes.copy()
    moved[1] += 2
    frames = np.zeros((4, 6, 8, 3), np.uint8)
    changed = frames.copy()
    changed[0, 0, 0, 0] = 3
    changed[3, 1, 1, 1] = 1
    for folder, b, f in ((ref, boxes, frames), (other, moved, changed)):
        np.save(folder / "det_boxes.npy", boxes)
        np.save(folder / "boxes.npy", b)
        np.save(folder / "frames.npy", f)
    result = gc.compare_dumps(ref, other)
    assert result["det_boxes"] == {"rows": 4, "equal_fraction": 1.0, "max_abs_diff": 0}
    assert result["boxes"] == {"rows": 4, "equal_fraction": 0.75, "max_abs_diff": 2}
    assert result["frames"]["count"] == 4 and result["frames"]["max_abs_diff"] == 3
    assert result["frames"]["mean_abs_diff"] == pytest.approx(4 / frames.size)
    assert result["frames"]["differing_fraction"] == pytest.approx(2 / frames.size)
    same = gc.compare_dumps(ref, ref)
    assert same["frames"]["psnr_db"] is None and same["frames"]["max_abs_diff"] == 0
    np.save(other / "frames.npy", frames[:3])
    assert "count" not in gc.compare_dumps(ref, other)["frames"]


def test_the_sanitizer_child_covers_worker_threads() -> None:
    """CSAN's dispatch mode is per thread; the child makes new threads run under one that shares the
    main thread's handler. On a CPU build CSAN sees no CUDA tensors, but it still counts kernel
    launches, given a stand-in for torch.cuda.current_stream."""
    code = f"""
import sys, threading, types
sys.path.insert(0, {str(SCRIPT.parent)!r})
import torch
from torch.cuda import _sanitizer as csan
torch.cuda.current_stream = lambda *a, **k: types.SimpleNamespace(cuda_stream=0)
import gpu_check
handler = csan.cuda_sanitizer.dispatch.event_handler
def work():
    (torch.ones(3) + 1).sum()
def in_thread():
    t = threading.Thread(target=work)
    t.start()
    t.join()
in_thread()
unpatched = handler.seq_num
covered = gpu_check._sanitize_worker_threads()
in_thread()
print(unpatched, handler.seq_num, covered[0])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TORCH_CUDA_SANITIZER": "1"})
    assert proc.returncode == 0, proc.stderr
    unpatched, patched, covered = map(int, proc.stdout.split())
    assert unpatched == 0  # a plain worker thread is invisible to CSAN
    assert patched >= 2 and covered == 1


def test_missing_ffmpeg_and_tqdm_are_reported_not_crashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc, "_importable", lambda module: module not in ("tqdm", "soxr"))
    monkeypatch.setattr(gc, "find_ffmpeg_exe", lambda: (None, "none: no ffmpeg found"))
    runner = gc.Runner(tmp_path, tmp_path, budget_s=120, echo=lambda line: None)
    deps = runner.run("deps", "Deps", gc.step_deps(gc.Config()), timeout_s=100)
    assert deps.status == "failed"
    assert "ffmpeg" in deps.summary and "stage prepare imageio-ffmpeg==0.7.0" in deps.summary
    stub = runner.state["stub_dir"] / "tqdm" / "__init__.py"
    assert stub.is_file() and "class tqdm" in stub.read_text()
    assert str(runner.state["stub_dir"]) in gc.child_env(runner.state)["PYTHONPATH"].split(os.pathsep)
    assert any("soxr missing: not needed" in line for line in deps.markdown)
    later = runner.run("prepare", "Prepare", lambda ctx: None, timeout_s=10, needs=("deps",))
    assert later.status == "skipped" and later.summary == "needs step 'deps', which failed"
