#!/usr/bin/env python3
"""gpu-check: every GPU check of this project in one command, within a fixed time budget.

    make gpu-check [OUT=DIR]                      # = python3 scripts/gpu_check.py --out DIR
    python3 scripts/gpu_check.py [--out DIR] [--budget 420] [--steps fps-fp16-1080p,...] [--keep-work]
    python3 scripts/gpu_check.py --rehearse --out /tmp/x   # developers: the same flow on the CPU, tiny sizes

Meant for a bare GPU machine that has only its image (Python, CUDA torch, triton, numpy, OpenCV,
pytest, click) plus the staged wheels in /tmp/site (see README, "GPU check"); it installs nothing
and needs no virtual environment. Without a CUDA GPU it prints one line and exits 0, writing
nothing. Otherwise it generates its own media and random-weight checkpoints, runs the steps below
one after another (each with its own timeout; a step that would start after the budget is spent is
recorded as skipped "out of time"; a failing step does not stop the others) and writes everything
to one folder:

    summary.json, summary.md     every step's status, timings and results, and the environment
    pytest-gpu.xml/.log          pytest -m gpu over tests/
    parity-*.json/.log           CPU FP32 vs torch-CUDA FP32/FP16 on a 320x240 clip (--dump-intermediates)
    sanitizer.log, sync-debug.log   the pipeline on a 1080p clip under TORCH_CUDA_SANITIZER=1 and
                                 under torch.cuda.set_sync_debug_mode("warn")
    fps-*.json/.log              torch-CUDA FP16/FP32 at 720p and 1080p: end-to-end and per-stage
                                 rates, GPU busy fraction sampled during the run
    kernels-bench.json/.log      benchmarks/kernels_bench.py

The exit status is 1 when any step failed, else 0. Only the CLI (``python -m wav2lip_trt infer``)
and the public helpers of wav2lip_trt.samples / wav2lip_trt.random_weights are used, so the
script does not depend on the pipeline's internals. This module imports only the standard library
at the top: torch is imported when the check starts, and never before the sanitizer child sets
TORCH_CUDA_SANITIZER.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
STAGED_SITE = Path("/tmp/site")  # where the staging tool's recv.sh installs wheels

NO_GPU_LINE = "gpu-check: no CUDA GPU visible to torch; nothing to check"
DEFAULT_BUDGET_S = 420.0  # the steps; with start-up, kills and the summary the check ends within 8 minutes
LOG_HEAD_BYTES = 600_000  # a longer log keeps its head and tail (the counts come from the full text)
LOG_TAIL_BYTES = 300_000
UTIL_INTERVAL_S = 0.1
STAGING_HINT = ("stage the ffmpeg wheel: ../shared/gpu/stage prepare imageio-ffmpeg==0.7.0 tqdm==4.70.1 "
                "(one batch, ~29 MiB; see README, 'GPU check')")

# Parity thresholds: torch-CUDA FP32 must match the CPU FP32 path this closely (TF32 convolutions
# and different kernels allow small differences); FP16 is reported, not judged.
FP32_MIN_EQUAL_BOXES = 0.95  # fraction of frames whose detected and final boxes are identical
FP32_MAX_MEAN_FRAME_DIFF = 1.0  # uint8 levels, mean over all output values
SCORE_FP32_TOLERANCE = 1e-3  # --score on CUDA FP32 vs the CPU: similarity mean, sync loss, quality mean

STATUSES = ("passed", "failed", "skipped")


# --------------------------------------------------------------------------------------------
# Steps and their results


@dataclass
class StepResult:
    """One step of the check: what summary.json and summary.md report."""

    name: str
    title: str
    status: str  # passed | failed | skipped
    summary: str = ""  # one line: the result, or why it failed / was skipped
    seconds: float = 0.0
    timeout_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # relative to the results folder
    markdown: list[str] = field(default_factory=list)  # extra lines for summary.md


class StepFailed(Exception):
    """Raised by a step: it ran and found a problem (or could not run its check)."""


class StepSkipped(Exception):
    """Raised by a step that has nothing to check here (the reason is the message)."""


@dataclass
class StepContext:
    """What a step function gets: where to write, how long it may take, shared state."""

    name: str
    out: Path
    work: Path
    timeout_s: float
    deadline: float  # on the runner's clock
    clock: Callable[[], float]
    state: dict[str, Any]
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    markdown: list[str] = field(default_factory=list)

    def remaining(self) -> float:
        return max(0.0, self.deadline - self.clock())

    def add_file(self, path: Path) -> None:
        try:
            rel = str(Path(path).resolve().relative_to(self.out.resolve()))
        except ValueError:
            rel = str(path)
        if rel not in self.files:
            self.files.append(rel)


StepFn = Callable[[StepContext], None]


class Runner:
    """Runs steps in order under one overall budget; records a StepResult for each.

    A step starts only with at least ``min_s`` seconds of the budget left (else: skipped, "out of
    time"); it may use ``min(timeout_s, what is left)``. A step that outlives that (plus
    ``grace_s``) is recorded as failed and left behind (its thread is a daemon; subprocess steps
    end themselves at their deadline). A step whose prerequisites did not pass is skipped.
    """

    def __init__(self, out: Path, work: Path, budget_s: float, *, clock: Callable[[], float] = time.monotonic,
                 grace_s: float = 10.0, echo: Callable[[str], None] | None = None) -> None:
        self.out, self.work, self.budget_s, self.clock, self.grace_s = out, work, budget_s, clock, grace_s
        self.started = clock()
        self.deadline = self.started + budget_s
        self.results: list[StepResult] = []
        self.state: dict[str, Any] = {}
        self.echo = echo or (lambda line: print(line, flush=True))

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def status_of(self, name: str) -> str | None:
        for result in self.results:
            if result.name == name:
                return result.status
        return None

    def skip(self, name: str, title: str, reason: str, timeout_s: float | None = None) -> StepResult:
        return self._record(StepResult(name, title, "skipped", reason, 0.0, timeout_s))

    def run(self, name: str, title: str, fn: StepFn, *, timeout_s: float, min_s: float = 5.0,
            needs: Sequence[str] = ()) -> StepResult:
        for need in needs:
            status = self.status_of(need)
            if status != "passed":
                return self.skip(name, title, f"needs step '{need}', which {status or 'did not run'}", timeout_s)
        left = self.remaining()
        if left < min_s:
            return self.skip(name, title, f"out of time: {max(left, 0):.0f} s of the {self.budget_s:.0f} s budget "
                                          f"left, the step needs at least {min_s:.0f} s", timeout_s)
        allowed = min(timeout_s, left)
        start = self.clock()
        ctx = StepContext(name, self.out, self.work, allowed, start + allowed, self.clock, self.state)
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                fn(ctx)
                outcome["status"] = "passed"
            except StepSkipped as exc:
                outcome.update(status="skipped", summary=str(exc))
            except StepFailed as exc:
                outcome.update(status="failed", summary=str(exc))
            except BaseException as exc:  # noqa: BLE001  a broken step must not stop the others
                outcome.update(status="failed", summary=f"{type(exc).__name__}: {exc}",
                               traceback=traceback.format_exc())

        self.echo(f"gpu-check: {name} ... (up to {allowed:.0f} s)")
        thread = threading.Thread(target=target, name=f"gpu-check-{name}", daemon=True)
        thread.start()
        thread.join(allowed + self.grace_s)
        seconds = self.clock() - start
        if thread.is_alive():
            outcome = {"status": "failed", "summary": f"timed out after {seconds:.0f} s (limit {allowed:.0f} s)"}
        result = StepResult(name, title, outcome["status"], outcome.get("summary") or ctx.summary,
                            round(seconds, 2), round(allowed, 1), dict(ctx.details), list(ctx.files),
                            list(ctx.markdown))
        if "traceback" in outcome:
            result.details["traceback"] = outcome["traceback"]
        return self._record(result)

    def _record(self, result: StepResult) -> StepResult:
        self.results.append(result)
        self.echo(f"gpu-check: {result.name}: {result.status.upper()} ({result.seconds:.1f} s) {result.summary}")
        return result


# --------------------------------------------------------------------------------------------
# Summary files


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("\n", " ").replace("|", "\\|")


def _fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def overall_status(steps: Sequence[StepResult]) -> str:
    return "failed" if any(s.status == "failed" for s in steps) else "passed"


def throughput_table(steps: Sequence[StepResult]) -> list[str]:
    """One markdown table over every step with ``details["kind"] == "throughput"``."""
    rows = [s for s in steps if s.details.get("kind") == "throughput" and s.details.get("report")]
    if not rows:
        return []
    stages: list[str] = []
    for step in rows:
        for row in step.details["report"].get("stages", []):
            if row.get("stage") not in stages:
                stages.append(row.get("stage"))
    head = ["run", "frames", "end-to-end fps", "× real time", "seconds", "GPU busy (run / active)"]
    head += [f"{s} /s" for s in stages]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for step in rows:
        report, busy = step.details["report"], step.details.get("gpu_busy") or {}
        rates = {r.get("stage"): _fmt(r.get("items_per_second")) if r.get("items") else f"{_fmt(r.get('seconds'), 2)} s"
                 for r in report.get("stages", [])}
        if busy.get("busy_fraction") is not None:
            active = busy.get("busy_fraction_active")
            busy_text = f"{busy['busy_fraction']:.0%}" + (f" / {active:.0%}" if active is not None else "")
        else:
            busy_text = "not sampled"
        cells = [step.name, report.get("frames"), _fmt(report.get("frames_per_second")),
                 _fmt(report.get("realtime_factor"), 2), _fmt(report.get("seconds"), 2), busy_text]
        cells += [rates.get(s, "–") for s in stages]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    methods = sorted({(s.details.get("gpu_busy") or {}).get("method") or "none" for s in rows})
    lines += ["", "End-to-end fps is frames / the whole `infer` call (model loading, Triton JIT and ffmpeg "
              "included); a stage's column is items per second of its busy time (for a stage without items: "
              "its busy seconds). GPU busy: mean utilisation over the whole run / between the first and last "
              "busy sample; sampled with " + ", ".join(methods) + "."]
    return lines


def environment_rows(env: dict[str, Any]) -> list[tuple[str, str]]:
    gpu = env.get("gpu") or {}
    versions = env.get("versions") or {}
    rows = []
    if gpu:
        mem = gpu.get("memory_bytes")
        rows.append(("GPU", f"{gpu.get('name')} (compute {gpu.get('capability')}"
                            + (f", {mem / 2**30:.0f} GiB" if mem else "") + f"), {gpu.get('count', 1)} visible"))
    rows.append(("driver", env.get("driver") or "unknown"))
    rows.append(("torch", f"{env.get('torch')} (CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')})"))
    for name in ("triton", "numpy", "opencv-python-headless", "click", "tqdm", "soxr", "imageio-ffmpeg", "cupy",
                 "onnxruntime", "pytest"):
        rows.append((name, versions.get(name) or "not installed"))
    rows.append(("ffmpeg", env.get("ffmpeg") or "none"))
    rows.append(("GPU utilisation sampling", env.get("util_method") or "none"))
    rows.append(("python", f"{env.get('python')} ({env.get('executable')})"))
    rows.append(("machine", f"{env.get('host')}, {env.get('cpu_count')} CPUs, {env.get('platform')}"))
    rows.append(("commit", env.get("git_commit") or "unknown"))
    if env.get("rehearsal"):
        rows.append(("mode", "REHEARSAL on the CPU (--rehearse): not a GPU check"))
    return rows


def write_summary(out: Path, steps: Sequence[StepResult], env: dict[str, Any], *, budget_s: float | None = None,
                  started_utc: str | None = None, seconds: float | None = None) -> dict[str, Any]:
    """Write ``summary.json`` and ``summary.md`` into ``out``; returns the JSON document."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    status = overall_status(steps)
    counts = {s: sum(1 for step in steps if step.status == s) for s in STATUSES}
    doc = {
        "check": "gpu-check", "format": 1, "status": status, "counts": counts,
        "started_utc": started_utc, "finished_utc": _utc_now(), "seconds": seconds, "budget_s": budget_s,
        "env": env, "steps": [asdict(s) for s in steps],
    }
    (out / "summary.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")

    lines = [f"# gpu-check: {status.upper()}", ""]
    timing = f"{seconds:.0f} s" if seconds is not None else "? s"
    lines.append(f"Started {started_utc or '?'} (UTC), took {timing}"
                 + (f" of a {budget_s:.0f} s budget" if budget_s else "")
                 + f"; {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped.")
    lines += ["", "## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in environment_rows(env)]
    lines += ["", "## Steps", "", "| step | status | seconds | result | files |", "|---|---|---|---|---|"]
    for step in steps:
        files = ", ".join(f"`{f}`" for f in step.files)
        lines.append(f"| {_cell(step.name)} | {step.status} | {step.seconds:.1f} | {_cell(step.summary)} | "
                     f"{_cell(files)} |")
    table = throughput_table(steps)
    if table:
        lines += ["", "## Throughput", ""] + table
    for step in steps:
        if step.markdown:
            lines += ["", f"## {step.title}", ""] + step.markdown
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return doc


# --------------------------------------------------------------------------------------------
# Log parsing

CSAN_REPORT = "CSAN detected a possible data race"
SYNC_WARNING = "called a synchronizing CUDA operation"
_SYNC_SITE = re.compile(r"^(?P<site>\S.*?:\d+): \w*Warning: " + re.escape(SYNC_WARNING), re.MULTILINE)
_CSAN_KERNEL = re.compile(r"^Access by stream (\d+) during kernel:\n(?P<op>\S+)", re.MULTILINE)
_CSAN_THREADS = re.compile(r"gpu-check child: sanitizer covered (\d+) worker thread")


def parse_sanitizer_log(text: str) -> dict[str, Any]:
    """CSAN reports in a log: their count, the kernels they name, whether CSAN aborted the run."""
    kernels = Counter(m.group("op") for m in _CSAN_KERNEL.finditer(text))
    threads = _CSAN_THREADS.findall(text)
    return {
        "reports": text.count(CSAN_REPORT),
        "kernels": dict(kernels.most_common()),
        "aborted_by_sanitizer": "CUDASanitizerErrors" in text,
        "worker_threads_covered": int(threads[-1]) if threads else None,
    }


def parse_sync_warnings(text: str, repo: Path = REPO) -> dict[str, Any]:
    """Sync-debug warnings in a log: their count and the source lines (sites) that raised them."""
    sites: Counter[str] = Counter()
    for match in _SYNC_SITE.finditer(text):
        site = match.group("site")
        prefix = str(repo) + os.sep
        sites[site[len(prefix):] if site.startswith(prefix) else site] += 1
    count = text.count(SYNC_WARNING)
    if count > sum(sites.values()):
        sites["(no source line)"] += count - sum(sites.values())
    return {"warnings": count, "sites": dict(sites.most_common())}


def parse_nvidia_smi(text: str) -> list[tuple[float, float | None]]:
    """``utilization.gpu, memory.used`` lines (csv, noheader, nounits) -> [(percent, MiB or None)]."""
    samples = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            util = float(parts[0])
        except (ValueError, IndexError):
            continue
        try:
            mem = float(parts[1]) if len(parts) > 1 else None
        except ValueError:
            mem = None
        samples.append((util, mem))
    return samples


def busy_stats(utils: Sequence[float], mems: Sequence[float | None] = ()) -> dict[str, Any]:
    """Busy fraction from utilisation samples (percent): over all samples, and between the first and
    last non-zero sample (the part of the run in which the GPU was used at all)."""
    utils = list(utils)
    stats: dict[str, Any] = {"samples": len(utils), "busy_fraction": None, "busy_fraction_active": None,
                             "max_percent": None, "peak_memory_used_mib": None}
    if utils:
        stats["busy_fraction"] = round(sum(utils) / len(utils) / 100.0, 4)
        stats["max_percent"] = max(utils)
        busy = [i for i, u in enumerate(utils) if u > 0]
        if busy:
            active = utils[busy[0]: busy[-1] + 1]
            stats["busy_fraction_active"] = round(sum(active) / len(active) / 100.0, 4)
    known = [m for m in mems if m is not None]
    if known:
        stats["peak_memory_used_mib"] = max(known)
    return stats


def parse_junit(path: Path) -> dict[str, int]:
    """Test counts of a pytest junit-xml file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


# --------------------------------------------------------------------------------------------
# Subprocesses, logs, GPU utilisation


@dataclass
class ProcResult:
    returncode: int | None
    timed_out: bool
    seconds: float
    text: str  # the whole log (before capping)


def cap_log(path: Path, head: int = LOG_HEAD_BYTES, tail: int = LOG_TAIL_BYTES) -> None:
    """Keep a long log's head and tail so the results folder stays small."""
    size = path.stat().st_size
    if size <= head + tail:
        return
    with open(path, "rb") as f:
        first = f.read(head)
        f.seek(size - tail)
        last = f.read()
    path.write_bytes(first + f"\n[... gpu-check cut {size - head - tail} bytes ...]\n".encode() + last)


def run_logged(cmd: Sequence[str], log: Path, timeout_s: float, *, env: dict[str, str] | None = None,
               cwd: Path = REPO) -> ProcResult:
    """Run ``cmd`` (stdout and stderr to ``log``) in its own process group; kill the group on timeout."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "wb") as f:
        f.write(("$ " + " ".join(str(c) for c in cmd) + "\n").encode())
        f.flush()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd, env=env, start_new_session=True)
        LIVE.add(proc)
        timed_out = False
        try:
            proc.wait(timeout=max(timeout_s, 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        finally:
            LIVE.discard(proc)
        seconds = time.monotonic() - start
        if timed_out:
            f.write(f"\n[gpu-check: killed after {seconds:.0f} s (timeout {timeout_s:.0f} s)]\n".encode())
    text = log.read_text(errors="replace")
    cap_log(log)
    return ProcResult(None if timed_out else proc.returncode, timed_out, round(seconds, 2), text)


LIVE: set[subprocess.Popen] = set()  # children still running (killed if the check is interrupted)


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("$ ")]
    return lines[-1][:300] if lines else "(no output)"


class _Nvml:
    """The few NVML calls needed, through ctypes (the driver always ships libnvidia-ml)."""

    class _Util(ctypes.Structure):
        _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]

    class _Mem(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]

    def __init__(self, index: int = 0, pci_bus_id: str | None = None) -> None:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
        if lib.nvmlInit_v2() != 0:
            raise OSError("nvmlInit failed")
        handle = ctypes.c_void_p()
        rc = 1
        if pci_bus_id:
            rc = lib.nvmlDeviceGetHandleByPciBusId_v2(pci_bus_id.encode(), ctypes.byref(handle))
        if rc != 0:
            rc = lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(handle))
        if rc != 0:
            raise OSError(f"nvmlDeviceGetHandle failed ({rc})")
        self.lib, self.handle = lib, handle

    def sample(self) -> tuple[float, float | None]:
        util, mem = self._Util(), self._Mem()
        if self.lib.nvmlDeviceGetUtilizationRates(self.handle, ctypes.byref(util)) != 0:
            raise OSError("nvmlDeviceGetUtilizationRates failed")
        used = mem.used / 2**20 if self.lib.nvmlDeviceGetMemoryInfo(self.handle, ctypes.byref(mem)) == 0 else None
        return float(util.gpu), used

    def driver(self) -> str | None:
        buf = ctypes.create_string_buffer(96)
        return buf.value.decode() if self.lib.nvmlSystemGetDriverVersion(buf, 96) == 0 else None


def _nvml_index() -> int:
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def choose_util_method(state: dict[str, Any]) -> str:
    """Pick how to sample GPU utilisation: torch.cuda.utilization (needs pynvml), NVML through
    ctypes, nvidia-smi, or none. Stores a polling function (or the nvidia-smi command) in state."""
    import torch

    try:
        torch.cuda.utilization(0)

        def poll_torch() -> tuple[float, float | None]:
            used = None
            if hasattr(torch.cuda, "device_memory_used"):
                try:
                    used = torch.cuda.device_memory_used(0) / 2**20
                except Exception:  # noqa: BLE001
                    used = None
            return float(torch.cuda.utilization(0)), used

        state["util_poll"] = poll_torch
        return "torch.cuda.utilization (pynvml)"
    except Exception:  # noqa: BLE001
        pass
    try:
        nvml = _Nvml(_nvml_index(), state.get("pci_bus_id"))
        nvml.sample()
        state["util_poll"] = nvml.sample
        state["nvml"] = nvml
        return "NVML via ctypes (libnvidia-ml.so.1)"
    except Exception:  # noqa: BLE001
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        state["util_smi"] = [smi, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                             "-lms", str(int(UTIL_INTERVAL_S * 1000)), "-i", str(_nvml_index())]
        return "nvidia-smi -lms 100"
    return "none"


class UtilSampler:
    """Samples GPU utilisation in the background while a child process runs."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.method = state.get("util_method", "none")
        self.poll = state.get("util_poll")
        self.smi_cmd = state.get("util_smi")
        self.samples: list[tuple[float, float | None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "UtilSampler":
        if self.poll is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        elif self.smi_cmd is not None:
            self._proc = subprocess.Popen(self.smi_cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.poll())
            except Exception:  # noqa: BLE001
                pass
            self._stop.wait(UTIL_INTERVAL_S)

    def _read_smi(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.samples += parse_nvidia_smi(line)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def stats(self) -> dict[str, Any]:
        samples = list(self.samples)
        return {"method": self.method, **busy_stats([u for u, _ in samples], [m for _, m in samples])}


# --------------------------------------------------------------------------------------------
# Environment


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dist_version(module: str) -> str | None:
    try:
        names = importlib.metadata.packages_distributions().get(module) or [module]
    except Exception:  # noqa: BLE001
        names = [module]
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


MODULES = {  # distribution name in the summary -> module
    "torch": "torch", "triton": "triton", "numpy": "numpy", "opencv-python-headless": "cv2", "click": "click",
    "tqdm": "tqdm", "soxr": "soxr", "imageio-ffmpeg": "imageio_ffmpeg", "cupy": "cupy", "onnxruntime": "onnxruntime",
    "pytest": "pytest", "pytest-benchmark": "pytest_benchmark", "pynvml": "pynvml",
}


def find_ffmpeg_exe() -> tuple[str | None, str]:
    """(path, description) of the ffmpeg the package would use, checked by running ``-version``."""
    try:
        from wav2lip_trt.ffmpeg import find_ffmpeg

        path = find_ffmpeg()
    except Exception as exc:  # noqa: BLE001
        return None, f"none: {exc}"
    try:
        proc = subprocess.run([path, "-hide_banner", "-version"], capture_output=True, text=True, timeout=20)
        first = (proc.stdout.splitlines() or ["?"])[0]
        if proc.returncode != 0:
            return None, f"{path} does not run (exit {proc.returncode})"
        version = re.match(r"ffmpeg version (\S+)", first)
        return path, f"{path} (ffmpeg {version.group(1) if version else first[:60]})"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{path} does not run: {exc}"


def collect_env(state: dict[str, Any], *, rehearsal: bool = False) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
        "host": platform.node(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": None, "rehearsal": rehearsal,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pythonpath": os.environ.get("PYTHONPATH"), "staged_site": STAGED_SITE.is_dir(),
        "versions": {name: _dist_version(module) for name, module in MODULES.items()},
        "git_commit": _git_commit(),
    }
    try:
        env["cudnn"] = torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "memory_bytes": props.total_memory, "count": torch.cuda.device_count()}
        bus = getattr(props, "pci_bus_id", None)
        if bus is not None:
            domain, device = getattr(props, "pci_domain_id", 0), getattr(props, "pci_device_id", 0)
            state["pci_bus_id"] = f"{domain:x}:{bus:x}:{device:x}.0"
        state["util_method"] = choose_util_method(state)
    else:
        state["util_method"] = "none (no CUDA GPU)"
    env["util_method"] = state["util_method"]
    env["driver"] = _driver_version(state)
    _, env["ffmpeg"] = find_ffmpeg_exe()
    return env


def _driver_version(state: dict[str, Any]) -> str | None:
    nvml = state.get("nvml")
    try:
        nvml = nvml or _Nvml(_nvml_index())
        return nvml.driver()
    except Exception:  # noqa: BLE001
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=20).stdout.strip().splitlines()
            return out[0] if out else None
        except (OSError, subprocess.TimeoutExpired):
            return None
    return None


def _git_commit() -> str | None:
    if not (REPO / ".git").exists() or not shutil.which("git"):
        return None
    try:
        proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return proc.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


# --------------------------------------------------------------------------------------------
# The check's configuration and steps


@dataclass(frozen=True)
class Config:
    rehearsal: bool = False  # CPU stands in for the GPU: tiny sizes, to test the script itself

    @property
    def device(self) -> str:
        return "cpu" if self.rehearsal else "cuda"

    def precision(self, wanted: str) -> str:
        return "fp32" if self.rehearsal else wanted  # torch FP16 needs CUDA

    @property
    def clips(self) -> dict[str, tuple[int, int, float]]:
        """name -> (width, height, seconds) of the generated face videos."""
        if self.rehearsal:
            return {"small": (160, 128, 1.0), "720p": (160, 128, 1.0), "1080p": (192, 144, 1.0)}
        return {"small": (320, 240, 2.0), "720p": (1280, 720, 5.0), "1080p": (1920, 1080, 5.0)}

    @property
    def audios(self) -> dict[str, float]:
        """name -> seconds of the generated 16 kHz speech-like WAVs (the output has one frame per 40 ms)."""
        if self.rehearsal:
            return {"short": 0.6, "long": 1.0}
        return {"short": 2.0, "long": 5.0}


def child_env(state: dict[str, Any], **extra: str) -> dict[str, str]:
    """The children's environment: PYTHONPATH with the repository, /tmp/site and any stub first."""
    env = dict(os.environ)
    paths = [str(REPO)]
    if STAGED_SITE.is_dir():
        paths.append(str(STAGED_SITE))
    if state.get("stub_dir"):
        paths.append(str(state["stub_dir"]))
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in paths]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    env.update(extra)
    return env


TQDM_STUB = '''"""No-op stand-in for tqdm, written by scripts/gpu_check.py because tqdm is not installed here.
The check runs infer with -q, so no progress bar is ever drawn."""


class tqdm:  # noqa: N801
    def __init__(self, iterable=None, *args, total=None, **kwargs):
        self.iterable, self.total, self.n = iterable, total, 0

    def __iter__(self):
        for item in self.iterable or ():
            self.n += 1
            yield item

    def update(self, n=1):
        self.n += n

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
'''


def step_env(cfg: Config, env_out: dict[str, Any]) -> StepFn:
    def run(ctx: StepContext) -> None:
        env_out.update(collect_env(ctx.state, rehearsal=cfg.rehearsal))
        gpu = env_out.get("gpu") or {}
        triton = env_out["versions"].get("triton") or "missing"
        ctx.summary = (f"{gpu.get('name', 'no GPU')}, torch {env_out['torch']} (CUDA {env_out['cuda']}), "
                       f"triton {triton}, driver {env_out.get('driver') or '?'}")
    return run


def step_deps(cfg: Config) -> StepFn:
    """What the infer pipeline needs at run time on this image, and how the check copes without it."""

    def run(ctx: StepContext) -> None:
        notes, missing = [], []
        have = {name: _importable(module) for name, module in MODULES.items()}
        for name in ("torch", "numpy", "opencv-python-headless", "click"):
            if not have[name]:
                missing.append(f"{name} (not importable)")
        if not have["tqdm"]:
            stub = ctx.work / "stubs"
            (stub / "tqdm").mkdir(parents=True, exist_ok=True)
            (stub / "tqdm" / "__init__.py").write_text(TQDM_STUB)
            ctx.state["stub_dir"] = stub
            notes.append("tqdm missing: a no-op stub stands in (runs are -q)")
        if not have["soxr"]:
            notes.append("soxr missing: not needed, the clips are 16 kHz WAV (audio.py imports soxr only to resample)")
        if not have["triton"]:
            notes.append("triton missing: kernels-bench skips, the pipeline uses its torch fallbacks")
        path, desc = find_ffmpeg_exe()
        ctx.details.update(modules=have, ffmpeg=desc, tqdm_stub=bool(ctx.state.get("stub_dir")))
        if path is None:
            missing.append(f"ffmpeg ({desc}); {STAGING_HINT}")
        else:
            ctx.state["ffmpeg"] = path
            notes.insert(0, f"ffmpeg: {desc}")
        # The pipeline's modules must import with what is here (plus the stub).
        probe = ("import wav2lip_trt.cli, wav2lip_trt.pipeline, wav2lip_trt.progress, wav2lip_trt.samples, "
                 "wav2lip_trt.random_weights")
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                              env=child_env(ctx.state), timeout=max(ctx.remaining(), 5))
        ctx.details["import_probe"] = "ok" if proc.returncode == 0 else last_line(proc.stderr)
        if proc.returncode != 0:
            missing.append(f"the package does not import: {last_line(proc.stderr)}")
        ctx.details["notes"] = notes
        ctx.markdown += [f"- {n}" for n in notes + [f"MISSING: {m}" for m in missing]]
        if missing:
            raise StepFailed("missing: " + "; ".join(missing))
        ctx.summary = "; ".join(notes) if notes else "all runtime dependencies present"

    return run


def step_prepare(cfg: Config) -> StepFn:
    """Random-weight checkpoints and the generated clips (H.264 via ffmpeg) and 16 kHz WAVs."""

    def run(ctx: StepContext) -> None:
        from wav2lip_trt.random_weights import write_random_checkpoints, write_random_scoring_checkpoints
        from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav

        start = time.monotonic()
        media = ctx.work / "media"
        media.mkdir(parents=True, exist_ok=True)
        wav2lip, s3fd = write_random_checkpoints(ctx.work / "checkpoints", seed=0)
        ctx.state["checkpoints"] = (wav2lip, s3fd)
        expert, _, disc = write_random_scoring_checkpoints(ctx.work / "checkpoints", seed=0)
        ctx.state["scoring"] = (expert, disc)
        timings = {"checkpoints": round(time.monotonic() - start, 2)}
        audios = {}
        for name, seconds in cfg.audios.items():
            audios[name] = write_wav(media / f"speech-{name}.wav", float_to_int16(speechlike_audio(seconds, seed=1)),
                                     16000)
        ctx.state["audio"] = audios
        clips = {}
        for name, (width, height, seconds) in cfg.clips.items():
            t0 = time.monotonic()
            count = int(round(seconds * 25))
            clips[name] = write_video(media / f"face-{name}.mp4", talking_face_frames(count, width, height, seed=2),
                                      25.0, ffmpeg=ctx.state.get("ffmpeg"))
            timings[f"clip_{name}"] = round(time.monotonic() - t0, 2)
        ctx.state["clips"] = clips
        ctx.details.update(clips={k: {"width": w, "height": h, "seconds": s, "fps": 25}
                                  for k, (w, h, s) in cfg.clips.items()},
                           audio_seconds=cfg.audios, seconds=timings, checkpoints="random weights, seed 0")
        ctx.summary = ("random-weight checkpoints; clips " + ", ".join(f"{k} {w}x{h} {s:g} s"
                                                                       for k, (w, h, s) in cfg.clips.items()))

    return run


def infer_args(ctx: StepContext, cfg: Config, run_name: str, clip: str, audio: str, precision: str, *,
               dump: Path | None = None, extra: Sequence[str] = ()) -> tuple[list[str], Path]:
    """``infer`` arguments for one run and the path of its JSON report (in the results folder)."""
    wav2lip, s3fd = ctx.state["checkpoints"]
    report = ctx.out / f"{run_name}.json"
    args = ["infer", "--checkpoint_path", wav2lip, "--s3fd-checkpoint", s3fd, "--face", ctx.state["clips"][clip],
            "--audio", ctx.state["audio"][audio], "--outfile", ctx.work / "outputs" / f"{run_name}.mp4",
            "--device", cfg.device if precision != "cpu" else "cpu",
            "--precision", cfg.precision(precision) if precision != "cpu" else "fp32",
            "--backend", "torch", "--on-missing-face", "previous", "--json", report, "-q"]
    if dump is not None:
        args += ["--dump-intermediates", dump]
    (ctx.work / "outputs").mkdir(parents=True, exist_ok=True)
    return [str(a) for a in args] + list(extra), report


def score_args(ctx: StepContext) -> list[str]:
    """``--score`` with the expert and the discriminator: the scorer runs on the compute stream too."""
    expert, disc = ctx.state["scoring"]
    return ["--score", "--expert-checkpoint", str(expert), "--disc-checkpoint", str(disc)]


def score_summary(report: dict[str, Any]) -> dict[str, Any]:
    expert, quality = report.get("expert") or {}, report.get("visual_quality") or {}
    sims = [v for v in expert.get("similarity") or [] if v is not None]
    return {"similarity_mean": sum(sims) / len(sims) if sims else None, "sync_loss": expert.get("sync_loss"),
            "av_offset": expert.get("av_offset"), "quality_mean": quality.get("mean")}


def run_infer(ctx: StepContext, run_name: str, args: list[str], report: Path, *, child: str | None = None,
              extra_env: dict[str, str] | None = None, sample_util: bool = False,
              timeout_s: float | None = None) -> tuple[ProcResult, dict[str, Any] | None, dict[str, Any] | None]:
    """Run ``infer`` (directly, or through one of this script's child modes); returns the process
    result, the parsed JSON report (None if the run failed) and the GPU utilisation stats."""
    if child is None:
        cmd = [sys.executable, "-m", "wav2lip_trt", *args]
    else:
        cmd = [sys.executable, str(SCRIPT), "--child", child, "--", *args]
    log = ctx.out / f"{run_name}.log"
    limit = min(timeout_s or ctx.remaining(), ctx.remaining())
    util = None
    if sample_util:
        with UtilSampler(ctx.state) as sampler:
            proc = run_logged(cmd, log, limit, env=child_env(ctx.state, **(extra_env or {})))
        util = sampler.stats()
    else:
        proc = run_logged(cmd, log, limit, env=child_env(ctx.state, **(extra_env or {})))
    ctx.add_file(log)
    data = None
    if proc.returncode == 0 and report.is_file():
        data = json.loads(report.read_text())
        ctx.add_file(report)
    return proc, data, util


def _run_failure(run_name: str, proc: ProcResult) -> str:
    if proc.timed_out:
        return f"{run_name} timed out after {proc.seconds:.0f} s"
    return f"{run_name} exited {proc.returncode}: {last_line(proc.text)}"


def step_pytest(cfg: Config) -> StepFn:
    def run(ctx: StepContext) -> None:
        xml, log = ctx.out / "pytest-gpu.xml", ctx.out / "pytest-gpu.log"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests", "-q", "-p", "no:cacheprovider",
               f"--junitxml={xml}", "-o", "junit_family=xunit2"]
        proc = run_logged(cmd, log, ctx.remaining(), env=child_env(ctx.state))
        ctx.add_file(log)
        counts = None
        if xml.is_file():
            ctx.add_file(xml)
            counts = parse_junit(xml)
        ctx.details.update(returncode=proc.returncode, timed_out=proc.timed_out, counts=counts)
        if proc.timed_out:
            raise StepFailed(f"timed out after {proc.seconds:.0f} s")
        text = (f"{counts['passed']} passed, {counts['failures']} failed, {counts['errors']} errors, "
                f"{counts['skipped']} skipped" if counts else last_line(proc.text))
        if proc.returncode == 5:
            raise StepFailed("no test selected by -m gpu")
        if proc.returncode != 0:
            raise StepFailed(f"pytest exited {proc.returncode}: {text}")
        ctx.summary = text

    return run


def compare_dumps(ref: Path, other: Path) -> dict[str, Any]:
    """Boxes and output frames of two ``--dump-intermediates`` folders, frame by frame."""
    import numpy as np

    out: dict[str, Any] = {}
    for name in ("det_boxes", "boxes"):
        a, b = ref / f"{name}.npy", other / f"{name}.npy"
        if not (a.is_file() and b.is_file()):
            out[name] = None
            continue
        x, y = np.load(a), np.load(b)
        if x.shape != y.shape:
            out[name] = {"shape_ref": list(x.shape), "shape": list(y.shape), "equal_fraction": 0.0}
            continue
        equal = (x == y).reshape(len(x), -1).all(axis=1) if len(x) else np.ones(0, bool)
        out[name] = {"rows": int(len(x)), "equal_fraction": float(equal.mean()) if len(x) else 1.0,
                     "max_abs_diff": int(np.abs(x.astype(np.int64) - y.astype(np.int64)).max()) if x.size else 0}
    a, b = np.load(ref / "frames.npy", mmap_mode="r"), np.load(other / "frames.npy", mmap_mode="r")
    if a.shape != b.shape:
        out["frames"] = {"shape_ref": list(a.shape), "shape": list(b.shape)}
        return out
    maxd, total, differing, sq = 0, 0.0, 0, 0.0
    for i in range(0, len(a), 8):  # blocks: bounded memory for any clip
        d = np.abs(a[i:i + 8].astype(np.int16) - b[i:i + 8].astype(np.int16))
        maxd = max(maxd, int(d.max()) if d.size else 0)
        total += float(d.sum())
        differing += int(np.count_nonzero(d))
        sq += float((d.astype(np.float64) ** 2).sum())
    n = a.size or 1
    mse = sq / n
    out["frames"] = {"count": int(len(a)), "max_abs_diff": maxd, "mean_abs_diff": total / n,
                     "differing_fraction": differing / n,
                     "psnr_db": None if mse == 0 else round(10 * math.log10(255.0**2 / mse), 2)}
    return out


def step_parity(cfg: Config) -> StepFn:
    """CPU FP32 vs torch-CUDA FP32 and FP16 on the small clip, via --dump-intermediates."""

    def run(ctx: StepContext) -> None:
        runs = [("parity-cpu-fp32", "cpu"), ("parity-cuda-fp32", "fp32"), ("parity-cuda-fp16", "fp16")]
        dumps, reports = {}, {}
        for run_name, precision in runs:
            dump = ctx.work / "dumps" / run_name
            args, report = infer_args(ctx, cfg, run_name, "small", "short", precision, dump=dump,
                                      extra=score_args(ctx))
            proc, data, _ = run_infer(ctx, run_name, args, report)
            if data is None:
                raise StepFailed(_run_failure(run_name, proc))
            dumps[run_name], reports[run_name] = dump, data
        results = {name: compare_dumps(dumps["parity-cpu-fp32"], dumps[name]) for name in dumps
                   if name != "parity-cpu-fp32"}
        scores = {name: score_summary(data) for name, data in reports.items()}
        ctx.details.update(comparisons=results, thresholds={
            "fp32_min_equal_boxes": FP32_MIN_EQUAL_BOXES, "fp32_max_mean_frame_diff": FP32_MAX_MEAN_FRAME_DIFF},
            runs={k: {key: v.get(key) for key in ("device", "precision", "frames", "seconds")}
                  for k, v in reports.items()}, scores=scores)
        ctx.markdown += ["Against CPU FP32 on the same clip and random-weight checkpoints:", "",
                         "| run | detected boxes equal | final boxes equal | frames max / mean abs diff | "
                         "differing values | PSNR |", "|---|---|---|---|---|---|"]
        problems = []
        for name, res in results.items():
            frames = res.get("frames") or {}
            det, box = res.get("det_boxes") or {}, res.get("boxes") or {}
            if "count" not in frames:
                problems.append(f"{name}: frame count/shape differs {frames}")
                continue
            ctx.markdown.append(
                f"| {name} | {_pct(det.get('equal_fraction'))} | {_pct(box.get('equal_fraction'))} | "
                f"{frames['max_abs_diff']} / {frames['mean_abs_diff']:.4f} | {frames['differing_fraction']:.2%} | "
                f"{_fmt(frames['psnr_db'], 1) + ' dB' if frames['psnr_db'] is not None else 'identical'} |")
            if name.endswith("fp32"):
                for label, part in (("detected boxes", det), ("final boxes", box)):
                    if part and part.get("equal_fraction", 0.0) < FP32_MIN_EQUAL_BOXES:
                        problems.append(f"{name}: {label} equal in only {part['equal_fraction']:.0%} of frames")
                if frames["mean_abs_diff"] > FP32_MAX_MEAN_FRAME_DIFF:
                    problems.append(f"{name}: mean frame difference {frames['mean_abs_diff']:.3f} levels")
        ctx.markdown += ["", f"FP32 must have ≥ {FP32_MIN_EQUAL_BOXES:.0%} identical boxes and a mean frame "
                             f"difference ≤ {FP32_MAX_MEAN_FRAME_DIFF} level; FP16 is reported, not judged.", "",
                         "`--score` (expert + discriminator, scored on the device on CUDA):", "",
                         "| run | similarity mean | sync loss | AV offset | quality mean |", "|---|---|---|---|---|"]
        for name, sc in scores.items():
            ctx.markdown.append(f"| {name} | {_fmt(sc['similarity_mean'], 6)} | {_fmt(sc['sync_loss'], 6)} | "
                                f"{sc['av_offset']} | {_fmt(sc['quality_mean'], 6)} |")
        ref_scores = scores["parity-cpu-fp32"]
        for name, sc in scores.items():
            if not name.endswith("cuda-fp32"):
                continue
            for key in ("similarity_mean", "sync_loss", "quality_mean"):
                a, b = ref_scores[key], sc[key]
                if a is None or b is None or abs(a - b) > SCORE_FP32_TOLERANCE:
                    problems.append(f"{name}: --score {key} {b} vs CPU {a}")
            if sc["av_offset"] != ref_scores["av_offset"]:
                problems.append(f"{name}: --score av_offset {sc['av_offset']} vs CPU {ref_scores['av_offset']}")
        parts = []
        for name, res in results.items():
            box, frames = res.get("boxes") or {}, res.get("frames") or {}
            if "count" in frames:
                parts.append(f"{name.removeprefix('parity-')}: boxes {_pct(box.get('equal_fraction'))} equal, "
                             f"frames max {frames['max_abs_diff']} mean {frames['mean_abs_diff']:.3f}")
        if problems:
            raise StepFailed("; ".join(problems))
        ctx.summary = "; ".join(parts)

    return run


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def step_sanitizer(cfg: Config) -> StepFn:
    """The pipeline on the 1080p clip under CUDA Sanitizer (CSAN), worker threads included."""

    def run(ctx: StepContext) -> None:
        args, report = infer_args(ctx, cfg, "sanitizer", "1080p", "short", "fp16",
                                  extra=["--face_det_batch_size", "4", "--wav2lip_batch_size", "16", *score_args(ctx)])
        # CSAN asks torch.cuda for the current stream on every op: a CPU-only rehearsal runs without it.
        extra_env = {"GPU_CHECK_NO_CSAN": "1"} if cfg.rehearsal else {"TORCH_CUDA_SANITIZER": "1"}
        proc, data, _ = run_infer(ctx, "sanitizer", args, report, child="sanitizer", extra_env=extra_env)
        parsed = parse_sanitizer_log(proc.text)
        ctx.details.update(parsed, returncode=proc.returncode, timed_out=proc.timed_out,
                           frames=(data or {}).get("frames"))
        ctx.markdown += ["CSAN sees the aten ops dispatched from Python threads (this check enables it on the "
                         "pipeline's worker threads too); Triton kernels and raw copies it does not see. It stops "
                         "the run at the first report. Batches are small (detect 4, generate 16) so that buffers "
                         "are reused many times."]
        if parsed["reports"]:
            raise StepFailed(f"{parsed['reports']} CSAN report(s), kernels: {', '.join(parsed['kernels']) or '?'} "
                             f"(sanitizer.log)")
        if data is None:
            raise StepFailed(_run_failure("the sanitized run", proc))
        threads = parsed["worker_threads_covered"]
        ctx.summary = (f"zero reports ({data.get('frames')} frames at 1080p"
                       + (f"; {threads} worker threads covered)" if threads is not None else ")"))

    return run


def step_sync(cfg: Config) -> StepFn:
    """The pipeline on the 1080p clip with torch.cuda.set_sync_debug_mode("warn"): where it syncs."""

    def run(ctx: StepContext) -> None:
        args, report = infer_args(ctx, cfg, "sync-debug", "1080p", "short", "fp16",
                                  extra=["--face_det_batch_size", "4", "--wav2lip_batch_size", "16", *score_args(ctx)])
        proc, data, _ = run_infer(ctx, "sync-debug", args, report, child="sync")
        parsed = parse_sync_warnings(proc.text)
        ctx.details.update(parsed, returncode=proc.returncode, timed_out=proc.timed_out,
                           frames=(data or {}).get("frames"))
        if parsed["sites"]:
            ctx.markdown += ["| synchronizing call site | warnings |", "|---|---|"]
            ctx.markdown += [f"| `{_cell(site)}` | {n} |" for site, n in parsed["sites"].items()] + [""]
        ctx.markdown += ["Every warning is shown (warnings filter 'always'); a sync per batch can be deliberate "
                             "(copies to the host for encoding), so warnings are reported, not judged."]
        if data is None:
            raise StepFailed(_run_failure("the sync-debug run", proc))
        ctx.summary = ("zero sync warnings" if not parsed["warnings"] else
                       f"{parsed['warnings']} sync warnings at {len(parsed['sites'])} sites "
                       f"({data.get('frames')} frames)")

    return run


def step_fps(cfg: Config, precision: str, clip: str) -> StepFn:
    """End-to-end and per-stage rates of one torch-CUDA run, with the GPU busy fraction."""

    def run(ctx: StepContext) -> None:
        name = f"fps-{precision}-{clip}"
        args, report = infer_args(ctx, cfg, name, clip, "long", precision)
        proc, data, util = run_infer(ctx, name, args, report, sample_util=True)
        ctx.details.update(kind="throughput", report=data, gpu_busy=util, returncode=proc.returncode)
        if data is None:
            raise StepFailed(_run_failure(name, proc))
        busy = (util or {}).get("busy_fraction")
        ctx.summary = (f"{data['frames']} frames {data['width']}x{data['height']}: {data['frames_per_second']} fps "
                       f"end to end, {data['realtime_factor']}× real time, GPU busy "
                       + (f"{busy:.0%}" if busy is not None else "not sampled"))

    return run


def step_kernels(cfg: Config) -> StepFn:
    def run(ctx: StepContext) -> None:
        out_json, log = ctx.out / "kernels-bench.json", ctx.out / "kernels-bench.log"
        cmd = [sys.executable, str(REPO / "benchmarks" / "kernels_bench.py"), "--out", str(out_json)]
        if cfg.rehearsal:
            cmd.append("--smoke")
        proc = run_logged(cmd, log, ctx.remaining(), env=child_env(ctx.state))
        ctx.add_file(log)
        ctx.details.update(returncode=proc.returncode, timed_out=proc.timed_out)
        if proc.timed_out:
            raise StepFailed(f"timed out after {proc.seconds:.0f} s")
        if proc.returncode == 0 and "kernels_bench: skipped" in proc.text:
            raise StepSkipped(last_line(proc.text))
        rows = []
        if out_json.is_file():
            ctx.add_file(out_json)
            rows = json.loads(out_json.read_text()).get("results", [])
        mismatches = [f"{r['stage']}@{r['resolution']}" for r in rows if not r.get("equals_torch", True)]
        ctx.details.update(measurements=len(rows), mismatches=mismatches)
        if rows:
            ctx.markdown += ["| stage | resolution | batch | triton ms | torch ms | CPU reference ms |",
                             "|---|---|---|---|---|---|"]
            table: dict[tuple, dict[str, float]] = {}
            for r in rows:
                table.setdefault((r["stage"], r["resolution"], r["batch"]), {})[r["impl"]] = r["median_ms"]
            for (stage, res, batch), impls in table.items():
                ctx.markdown.append(f"| {stage} | {res} | {batch} | {_fmt(impls.get('triton'), 3)} | "
                                    f"{_fmt(impls.get('torch'), 3)} | {_fmt(impls.get('cpu_reference'), 2)} |")
        if proc.returncode != 0:
            raise StepFailed(f"exited {proc.returncode}: " + (f"Triton differs from torch in {', '.join(mismatches)}"
                                                             if mismatches else last_line(proc.text)))
        ctx.summary = f"{len(rows)} measurements, Triton equals torch in all"

    return run


STEP_NAMES = ("env", "deps", "prepare", "pytest-gpu", "parity", "sanitizer", "sync-debug", "fps-fp16-1080p",
              "fps-fp32-1080p", "fps-fp16-720p", "fps-fp32-720p", "kernels-bench")
PREREQUISITES = ("env", "deps", "prepare")


def plan(cfg: Config, env_out: dict[str, Any]) -> list[tuple[str, str, StepFn, float, float, tuple[str, ...]]]:
    """(name, title, function, timeout s, minimum s to start, prerequisites) in the order they run:
    the most telling first, so that a tight budget drops the least."""
    pipeline = ("env", "deps", "prepare")
    steps = [
        ("env", "Environment", step_env(cfg, env_out), 60, 1, ()),
        ("deps", "Runtime dependencies", step_deps(cfg), 60, 1, ("env",)),
        ("prepare", "Generated media and checkpoints", step_prepare(cfg), 90, 10, ("deps",)),
        ("pytest-gpu", "pytest -m gpu", step_pytest(cfg), 150, 20, ("env",)),
        ("parity", "Parity: CPU vs torch-CUDA (boxes and frames)", step_parity(cfg), 150, 30, pipeline),
        ("sanitizer", "CUDA sanitizer (TORCH_CUDA_SANITIZER=1)", step_sanitizer(cfg), 100, 20, pipeline),
        ("sync-debug", "Sync debug mode (warn)", step_sync(cfg), 75, 15, pipeline),
    ]
    for clip in ("1080p", "720p"):
        for precision in ("fp16", "fp32"):
            steps.append((f"fps-{precision}-{clip}", f"Throughput: torch-CUDA {precision.upper()} at {clip}",
                          step_fps(cfg, precision, clip), 90, 15, pipeline))
    steps.append(("kernels-bench", "Kernels bench (benchmarks/kernels_bench.py)", step_kernels(cfg), 150, 30,
                  ("env",)))
    assert tuple(s[0] for s in steps) == STEP_NAMES
    return steps


# --------------------------------------------------------------------------------------------
# Child modes: run the infer CLI under the sanitizer or the sync debug mode


def _sanitize_worker_threads() -> list[int]:
    """CSAN's dispatch mode is thread-local: make every new thread run under a mode that shares the
    main thread's event handler (one view of all streams, events and allocations)."""
    from torch.cuda import _sanitizer as csan
    from torch.utils._python_dispatch import TorchDispatchMode

    handler = csan.cuda_sanitizer.dispatch.event_handler
    covered = [0]
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        try:
            mode = csan.CUDASanitizerDispatchMode.__new__(csan.CUDASanitizerDispatchMode)
            TorchDispatchMode.__init__(mode)
            mode.event_handler = handler
            mode.__enter__()
        except Exception as exc:  # noqa: BLE001  an unchecked thread beats a broken run
            print(f"gpu-check child: thread {self.name} NOT covered by the sanitizer: {exc!r}", file=sys.stderr)
            original(self)
            return
        covered[0] += 1
        try:
            original(self)
        finally:
            mode.__exit__(None, None, None)

    threading.Thread.run = run  # type: ignore[method-assign]
    return covered


def child_main(mode: str, args: list[str]) -> int:
    if mode == "sanitizer" and os.environ.get("GPU_CHECK_NO_CSAN"):
        os.environ.pop("TORCH_CUDA_SANITIZER", None)
        print("gpu-check child: CUDA sanitizer NOT enabled (rehearsal)", file=sys.stderr, flush=True)
    elif mode == "sanitizer":
        os.environ.setdefault("TORCH_CUDA_SANITIZER", "1")  # before torch is imported: enables CSAN
        import atexit

        import torch  # noqa: F401

        covered = _sanitize_worker_threads()
        atexit.register(lambda: print(f"gpu-check child: sanitizer covered {covered[0]} worker threads",
                                      file=sys.stderr, flush=True))
        print("gpu-check child: CUDA sanitizer enabled", file=sys.stderr, flush=True)
    elif mode == "sync":
        import warnings

        warnings.simplefilter("always")
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("warn")
            print("gpu-check child: sync debug mode 'warn'", file=sys.stderr, flush=True)
        else:
            print("gpu-check child: no CUDA, sync debug mode not set", file=sys.stderr, flush=True)
    elif mode != "infer":
        print(f"gpu-check child: unknown mode {mode}", file=sys.stderr)
        return 2
    from wav2lip_trt.cli import main as cli_main

    cli_main(args)
    return 0


# --------------------------------------------------------------------------------------------
# Main


def gpu_visible() -> tuple[bool, str]:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return False, f"torch does not import: {type(exc).__name__}: {exc}"
    try:
        return bool(torch.cuda.is_available()), ""
    except Exception as exc:  # noqa: BLE001
        return False, f"{type(exc).__name__}: {exc}"


def default_out() -> Path:
    return REPO / "benchmarks" / "results" / f"gpu-check-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default benchmarks/results/gpu-check-<UTC timestamp>)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds for all steps; a step that would start later is skipped "
                             f"[{DEFAULT_BUDGET_S:.0f}]")
    parser.add_argument("--steps", default="",
                        help="comma-separated steps to run (their prerequisites run too): " + ", ".join(STEP_NAMES))
    parser.add_argument("--keep-work", action="store_true", help="keep the generated media, outputs and dumps")
    parser.add_argument("--rehearse", action="store_true",
                        help="developers: run the same flow on the CPU at tiny sizes (checks this script, not the GPU)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"] and len(argv) >= 2:
        rest = argv[2:]
        return child_main(argv[1], rest[1:] if rest[:1] == ["--"] else rest)
    args = parse_args(argv)
    for path in (str(REPO), str(STAGED_SITE)):  # as `make gpu-check` sets PYTHONPATH
        if path not in sys.path and Path(path).is_dir():
            sys.path.insert(1, path)
    if not args.rehearse:
        visible, why = gpu_visible()
        if not visible:
            print(NO_GPU_LINE if not why else f"{NO_GPU_LINE} ({why})")
            return 0
    selected = {s.strip() for s in args.steps.split(",") if s.strip()}
    unknown = selected - set(STEP_NAMES)
    if unknown:
        print(f"gpu-check: unknown step(s) {', '.join(sorted(unknown))}; choose from {', '.join(STEP_NAMES)}",
              file=sys.stderr)
        return 2

    out = (args.out or default_out()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-work-"))
    started_utc, t0 = _utc_now(), time.monotonic()
    cfg = Config(rehearsal=args.rehearse)
    env: dict[str, Any] = {}
    runner = Runner(out, work, args.budget)
    print(f"gpu-check: results in {out}; budget {args.budget:.0f} s" + (" (REHEARSAL on the CPU)" if cfg.rehearsal
                                                                        else ""), flush=True)
    try:
        for name, title, fn, timeout_s, min_s, needs in plan(cfg, env):
            wanted = not selected or name in selected or (name in PREREQUISITES and _needed(name, selected))
            if not wanted:
                runner.skip(name, title, "not selected (--steps)")
                continue
            runner.run(name, title, fn, timeout_s=timeout_s, min_s=min_s, needs=needs)
    finally:
        for proc in list(LIVE):  # only after an interruption: every step waits for its own children
            _kill_group(proc)
        seconds = round(time.monotonic() - t0, 1)
        if not env:
            env = {"torch": None, "note": "the env step did not run"}
        doc = write_summary(out, runner.results, env, budget_s=args.budget, started_utc=started_utc,
                            seconds=seconds)
        if args.keep_work:
            print(f"gpu-check: work files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    counts = doc["counts"]
    print(f"gpu-check: {doc['status'].upper()}: {counts['passed']} passed, {counts['failed']} failed, "
          f"{counts['skipped']} skipped in {seconds:.0f} s; see {out / 'summary.md'}", flush=True)
    return 1 if doc["status"] == "failed" else 0


def _needed(prerequisite: str, selected: set[str]) -> bool:
    """Whether a prerequisite step runs for a --steps selection."""
    if prerequisite == "env":
        return True
    if prerequisite == "deps":  # also provides the tqdm stand-in that pytest may need
        return any(s != "kernels-bench" for s in selected)
    return any(s not in ("pytest-gpu", "kernels-bench") for s in selected)


if __name__ == "__main__":
    sys.exit(main())
