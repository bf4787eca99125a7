"""The child processes' modes: the CLI under CSAN, the sync debugger, event timing; CSAN's positive control.

    python3 -m gpucheck.child MODE -- infer ARGS...     MODE: infer | sanitizer | sync | csan-control

Settings that must precede the CLI come by environment (set by the step): GPU_CHECK_NO_TF32=1 (IEEE
FP32 convolutions and matmuls, for parity), GPU_CHECK_DETERMINISTIC=1 (fixed cuDNN algorithms, so that
three runs can be compared bit for bit), GPU_CHECK_TIMING=FILE (CUDA events per stage on the compute
stream, the steady rate and memory peaks, written as JSON). Only the standard library is imported at the
top: torch must come after TORCH_CUDA_SANITIZER is set.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
from pathlib import Path

from .logs import CHILD_FINISHED


def say(line: str) -> None:
    print(f"gpu-check child: {line}", file=sys.stderr, flush=True)


def sanitize_worker_threads() -> list[int]:
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
        except Exception as exc:  # noqa: BLE001  an unchecked thread beats a broken run; the verdict fails it
            say(f"thread {self.name} NOT covered by the sanitizer: {exc!r}")
            original(self)
            return
        covered[0] += 1
        try:
            original(self)
        finally:
            mode.__exit__(None, None, None)

    threading.Thread.run = run  # type: ignore[method-assign]
    return covered


def enable_sanitizer() -> None:
    os.environ["TORCH_CUDA_SANITIZER"] = "1"  # before torch is imported: enables CSAN
    import torch  # noqa: F401

    covered = sanitize_worker_threads()
    atexit.register(lambda: say(f"sanitizer covered {covered[0]} worker threads"))
    say("CUDA sanitizer enabled")


def positive_control() -> None:
    """A write on one stream in one thread, read on another stream in another thread with no wait: a race
    CSAN must report. Runs under the same thread coverage as the pipeline."""
    import torch

    data = torch.zeros(1 << 20, device="cuda")
    writer_stream, reader_stream = torch.cuda.Stream(), torch.cuda.Stream()
    written = threading.Event()

    def write() -> None:
        writer_stream.wait_stream(torch.cuda.default_stream())  # after the allocation's zero fill: only one race
        with torch.cuda.stream(writer_stream):
            torch.cuda._sleep(1_000_000)
            data.add_(1)
        written.set()

    def read() -> None:
        written.wait()
        with torch.cuda.stream(reader_stream):  # deliberately no reader_stream.wait_stream(writer_stream)
            try:
                (data * 2).sum()
            except Exception as exc:  # noqa: BLE001  CSAN raises here when it sees the race
                say(f"control raised {type(exc).__name__}")
                print(exc, file=sys.stderr, flush=True)

    threads = [threading.Thread(target=write, name="control-writer"), threading.Thread(target=read, name="control-reader")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.cuda.synchronize()


def set_numerics() -> None:
    import torch

    if os.environ.get("GPU_CHECK_NO_TF32"):
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        say("TF32 off (cuDNN and matmul)")
    if os.environ.get("GPU_CHECK_DETERMINISTIC"):
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        say("cuDNN deterministic, no autotuning")


def attach_timing(path: Path) -> None:
    """The library's own GPU timing of each run (CUDA events per GPU stage on the compute stream, the
    steady rate of written batches, the memory peaks), collected from the runs' results into ``path``
    (JSON) at exit."""
    import torch

    from wav2lip_trt import session
    from wav2lip_trt.execution.gpu_timing import memory_report

    results: list = []
    execute = session.Session.execute

    def keep(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202  only records what the run reports
        result = execute(self, *args, **kwargs)
        results.append(result)
        return result

    session.Session.execute = keep  # type: ignore[method-assign]

    def write() -> None:
        gpu: dict[str, float] = {}
        for result in results:
            for row in result.stages:
                if "gpu_seconds" in row:
                    gpu[row["stage"]] = round(gpu.get(row["stage"], 0.0) + row["gpu_seconds"], 6)
        rate = results[-1].rate if results else {"frames": 0, "batches": 0, "first_batch_s": None, "steady_fps": None}
        path.write_text(json.dumps({"gpu_stage_seconds": gpu, **rate, **memory_report(),
                                    "cuda": torch.cuda.is_available()}, indent=2) + "\n")

    atexit.register(write)


def main(argv: list[str]) -> int:
    mode, args = argv[0], argv[1:]
    args = args[1:] if args[:1] == ["--"] else args
    if mode in ("sanitizer", "csan-control"):
        enable_sanitizer()
    if mode == "csan-control":
        positive_control()
        print(CHILD_FINISHED, file=sys.stderr, flush=True)
        return 0
    if mode == "sync":
        import warnings

        warnings.simplefilter("always")
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("warn")
            say("sync debug mode 'warn'")
        else:
            say("no CUDA, sync debug mode not set")
    elif mode not in ("infer", "sanitizer"):
        say(f"unknown mode {mode}")
        return 2
    set_numerics()
    if os.environ.get("GPU_CHECK_TIMING"):
        attach_timing(Path(os.environ["GPU_CHECK_TIMING"]))
    from wav2lip_trt.cli import main as cli_main

    try:
        cli_main(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    print(CHILD_FINISHED, file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
