"""The measured process (``python -m wav2lip_trt.bench --child SPEC``): one lip-sync, then what the
parent cannot see from outside written to a file. It shares nothing with the parent's code but
the spec and result files, so it stands alone."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import Wav2LipTrtError


class _DeviceMemoryPeak:
    """Samples the GPU's memory in use from a thread; torch's own counters miss TensorRT's allocations."""

    def __init__(self, interval: float = 0.01) -> None:
        import torch

        self._torch = torch
        self.interval = interval
        self.start = self.peak = self._used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wav2lip-trt-gpu-memory", daemon=True)

    def _used(self) -> int:
        free, total = self._torch.cuda.mem_get_info()
        return int(total - free)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._used())

    def __enter__(self) -> "_DeviceMemoryPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._used())


def _options_from_json(data: dict[str, Any]) -> Any:
    from ..options import InferenceOptions

    paths = {"checkpoint_path", "s3fd_checkpoint", "face", "audio", "outfile", "engines_dir"}
    kwargs = {k: Path(v) if k in paths else tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return InferenceOptions(**kwargs)


def _child(spec_path: Path) -> None:
    """One measured run: lip-sync once, write what the parent cannot see from outside."""
    import torch

    spec = json.loads(spec_path.read_text())
    options = _options_from_json(spec["options"])
    cuda = spec["mode"] != "reference" and torch.cuda.is_available() and options.device != "cpu"
    sampler = _DeviceMemoryPeak() if cuda else None
    result: dict[str, Any]
    with sampler if sampler is not None else _nothing():
        start = time.perf_counter()
        if spec["mode"] == "reference":
            from ..reference import run_reference

            outputs = run_reference(options, write_video=True)
            seconds = time.perf_counter() - start
            result = {"frames": len(outputs.frames), "backend": "reference", "precision": "fp32", "device": "cpu",
                      "stages": [], "threads": torch.get_num_threads()}
        else:
            from ..session import run_inference

            run = run_inference(options)
            seconds = time.perf_counter() - start
            result = {"frames": run.frames, "backend": run.backend, "precision": run.precision, "device": run.device,
                      "stages": run.stages, "threads": torch.get_num_threads(),
                      "steady_fps": run.rate.get("steady_fps"), "first_batch_seconds": run.rate.get("first_batch_s")}
    result["seconds"] = seconds
    if cuda:
        result["gpu_peak_bytes"] = int(torch.cuda.max_memory_reserved())
        result["gpu_device_peak_bytes"] = sampler.peak - sampler.start  # type: ignore[union-attr]
    Path(spec["result"]).write_text(json.dumps(result))


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "--child":
        print("usage: python -m wav2lip_trt.bench --child SPEC.json (used by wav2lip-trt bench)", file=sys.stderr)
        return 2
    try:
        _child(Path(argv[1]))
    except Wav2LipTrtError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0
