"""Measuring whole runs: wall time and the peak resident memory of a child process.

Shared by the ``bench`` command and the ``benchmarks/`` suite, so both report the same numbers.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

_VERSIONED = ("torch", "numpy", "opencv-python-headless", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt",
              "tensorrt-cu12", "tensorrt-cu13", "tensorrt_rtx_cu13_bindings", "triton", "nvidia-dali-cuda130",
              "imageio-ffmpeg")


@dataclass(frozen=True)
class RunMeasurement:
    seconds: float  # wall clock
    peak_rss_bytes: int  # the child's own peak resident set (its children not included)
    returncode: int
    stderr: str


def run_measured(cmd: list[str], *, cwd: str | None = None, env: dict[str, str] | None = None) -> RunMeasurement:
    """Run ``cmd`` to completion; the kernel's rusage gives its peak RSS exactly, with no sampling."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    return RunMeasurement(seconds, usage.ru_maxrss * scale, proc.returncode, stderr)


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
