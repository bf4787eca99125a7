"""The machine a check ran on: versions, the GPU, ``nvidia-smi -q``, and GPU utilisation sampled during runs.

H100 SXM and PCIe differ about 1.3x in compute, so the full ``nvidia-smi -q`` is saved beside the numbers.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from . import REPO
from .logs import busy_stats, parse_nvidia_smi
from .staging import MODULES, STAGED_SITE

UTIL_INTERVAL_S = 0.1


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def dist_version(module: str) -> str | None:
    try:
        names = importlib.metadata.packages_distributions().get(module.split(".")[0]) or [module]
    except Exception:  # noqa: BLE001
        names = [module]
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def find_ffmpeg_exe() -> tuple[str | None, str]:
    """(path, description) of the ffmpeg the package would use, checked by running ``-version``."""
    try:
        from wav2lip_trt.ffmpeg import find_ffmpeg

        path = find_ffmpeg()
    except Exception as exc:  # noqa: BLE001
        return None, f"none: {exc}"
    try:
        proc = subprocess.run([path, "-hide_banner", "-version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{path} does not run: {exc}"
    if proc.returncode != 0:
        return None, f"{path} does not run (exit {proc.returncode})"
    return path, f"{path} ({(proc.stdout.splitlines() or ['?'])[0][:60]})"


def save_nvidia_smi(out: Path) -> str | None:
    """``nvidia-smi -q`` into ``out/nvidia-smi-q.txt``; the file's name, or None without nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        text = subprocess.run([smi, "-q"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    (out / "nvidia-smi-q.txt").write_text(text)
    return "nvidia-smi-q.txt"


def collect_env(*, rehearsal: bool = False) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
        "host": platform.node(), "cpu_count": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "rehearsal": rehearsal, "staged_site": STAGED_SITE.is_dir(), "git_commit": git_commit(),
        "versions": {name: dist_version(module) for name, module in MODULES.items()},
    }
    try:
        env["cudnn"] = torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001
        env["cudnn"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "memory_bytes": props.total_memory, "count": torch.cuda.device_count()}
    env["ffmpeg"] = find_ffmpeg_exe()[1]
    return env


def environment_rows(env: dict[str, Any]) -> list[tuple[str, str]]:
    gpu, versions = env.get("gpu") or {}, env.get("versions") or {}
    rows = []
    if gpu:
        mem = gpu.get("memory_bytes")
        rows.append(("GPU", f"{gpu.get('name')} (compute {gpu.get('capability')}"
                            + (f", {mem / 2**30:.0f} GiB" if mem else "") + f"), {gpu.get('count', 1)} visible"))
    rows.append(("torch", f"{env.get('torch')} (CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')})"))
    rows += [(name, versions.get(name) or "not installed") for name in MODULES if name != "torch"]
    rows.append(("ffmpeg", env.get("ffmpeg") or "none"))
    rows.append(("python", f"{env.get('python')} ({env.get('executable')})"))
    rows.append(("machine", f"{env.get('host')}, {env.get('cpu_count')} CPUs, {env.get('platform')}"))
    rows.append(("commit", env.get("git_commit") or "unknown"))
    if env.get("rehearsal"):
        rows.append(("mode", "REHEARSAL on the CPU (--rehearse): not a GPU check"))
    return rows


def git_commit() -> str | None:
    if not (REPO / ".git").exists() or not shutil.which("git"):
        return None
    try:
        proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None


class UtilSampler:
    """GPU utilisation and memory sampled with nvidia-smi every 100 ms while a child process runs."""

    def __init__(self) -> None:
        smi = shutil.which("nvidia-smi")
        self.cmd = None if smi is None else [smi, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,"
                                             "nounits", "-lms", str(int(UTIL_INTERVAL_S * 1000)), "-i", "0"]
        self.samples: list[tuple[float, float | None]] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "UtilSampler":
        if self.cmd is not None:
            self._proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.samples += parse_nvidia_smi(line)

    def __exit__(self, *exc: object) -> None:
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
        method = "nvidia-smi -lms 100" if self.cmd else "none (no nvidia-smi)"
        return {"method": method, **busy_stats([u for u, _ in samples], [m for _, m in samples])}
