"""Measuring whole runs: wall time, CPU time, page faults and the peak resident memory of a process.

Shared by the ``bench`` command, ``infer --profile/--json`` and the ``benchmarks/`` suite, so all
report the same numbers, read from the kernel's ``getrusage`` (exact counters, no sampling). Minor
page faults and system time are what a run pays for fresh memory (the kernel zeroing pages, see
:mod:`wav2lip_trt.execution.memory`); they are robust to other load on the machine, wall time is not.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

_VERSIONED = ("torch", "numpy", "opencv-python-headless", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt",
              "tensorrt-cu12", "tensorrt-cu13", "tensorrt_rtx_cu13_bindings", "triton", "nvidia-dali-cuda130",
              "imageio-ffmpeg")


_RSS_SCALE = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS


@dataclass(frozen=True)
class RunMeasurement:
    seconds: float  # wall clock
    peak_rss_bytes: int  # the child's own peak resident set (its children not included)
    returncode: int
    stderr: str
    user_seconds: float = 0.0  # CPU time of the child and the processes it waited for (ffmpeg), as time(1)
    sys_seconds: float = 0.0
    minor_faults: int = 0

    @property
    def sys_share(self) -> float:
        """System time as a fraction of all CPU time."""
        cpu = self.user_seconds + self.sys_seconds
        return self.sys_seconds / cpu if cpu > 0 else 0.0


@dataclass(frozen=True)
class Usage:
    """``getrusage(RUSAGE_SELF)`` at one moment: this process's CPU time, faults and peak RSS."""

    user_seconds: float
    sys_seconds: float
    minor_faults: int
    major_faults: int
    peak_rss_bytes: int

    @classmethod
    def now(cls) -> "Usage":
        u = resource.getrusage(resource.RUSAGE_SELF)
        return cls(u.ru_utime, u.ru_stime, u.ru_minflt, u.ru_majflt, u.ru_maxrss * _RSS_SCALE)

    def since(self, start: "Usage", frames: int) -> dict[str, float | int]:
        """What a run cost between ``start`` and this moment, per output frame where it matters
        (the ``resources`` of ``--json`` and ``--profile``); ``threads`` is torch's intra-op count."""
        import torch

        user, system = self.user_seconds - start.user_seconds, self.sys_seconds - start.sys_seconds
        faults = self.minor_faults - start.minor_faults
        return {
            "threads": torch.get_num_threads(), "user_seconds": round(user, 3), "sys_seconds": round(system, 3),
            "sys_share": round(system / (user + system), 4) if user + system > 0 else 0.0,
            "minor_faults": faults, "minor_faults_per_frame": round(faults / frames, 1) if frames else None,
            "major_faults": self.major_faults - start.major_faults, "peak_rss_mib": round(self.peak_rss_bytes / 2**20, 1),
        }


def describe_usage(usage: dict[str, float | int | None]) -> str:
    """One line for ``--profile``."""
    return (f"threads {usage['threads']}; CPU {usage['user_seconds']:.2f} s user + {usage['sys_seconds']:.2f} s system "
            f"({100 * float(usage['sys_share'] or 0):.1f} % system); {usage['minor_faults']:,} minor page faults "
            f"({usage['minor_faults_per_frame']} per frame); peak RSS {usage['peak_rss_mib']:.0f} MiB")


def run_measured(cmd: list[str], *, cwd: str | None = None, env: dict[str, str] | None = None) -> RunMeasurement:
    """Run ``cmd`` to completion; the kernel's rusage gives its peak RSS, CPU time and faults exactly."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return RunMeasurement(seconds, usage.ru_maxrss * _RSS_SCALE, proc.returncode, stderr, usage.ru_utime,
                          usage.ru_stime, usage.ru_minflt)


def machine_info() -> dict[str, object]:
    """What a result file needs to be comparable: host, CPU count, library versions, GPU if any."""
    import cv2
    import numpy
    import torch

    from . import __version__

    info: dict[str, object] = {
        "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
        "wav2lip_trt": __version__, "torch": torch.__version__, "numpy": numpy.__version__, "opencv": cv2.__version__,
        "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_capability=f"{props.major}.{props.minor}", gpu_memory_bytes=props.total_memory,
                    cuda_runtime=torch.version.cuda)
    return info


def library_versions() -> dict[str, str]:
    """Installed versions of the packages that change the numbers (read from metadata, nothing imported)."""
    found = {}
    for name in _VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def machine_record() -> dict[str, object]:
    """``machine_info()`` plus the installed versions: what every committed result file records."""
    return {**machine_info(), "versions": library_versions()}
