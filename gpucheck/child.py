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

GPU_STAGES = ("detect", "postprocess", "crop", "generate", "paste", "score")  # the pipeline thread's, on the compute stream


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
    """CUDA events around every timed stage on the run's compute stream, a timestamp per written batch,
    and the memory peaks at exit, into ``path`` (JSON)."""
    import torch

    from wav2lip_trt.execution import context, writer
    from wav2lip_trt.execution.gpu_timing import EventClock, SteadyRate, memory_report
    from wav2lip_trt.stages import StageTimes

    clocks: list[EventClock] = []
    rate = SteadyRate()
    init_ctx, init_writer, stage = context.DeviceContext.__init__, writer.WriterThread.__init__, StageTimes.stage

    def ctx_init(self, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        init_ctx(self, *args, **kwargs)
        clocks.append(EventClock(self.compute))

    def writer_init(self, *args, busy=None, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        def batch(seconds: float, frames: int) -> None:  # the writer reports each batch once it is written
            rate.batch(frames)
            if busy is not None:
                busy(seconds, frames)

        init_writer(self, *args, busy=batch, **kwargs)

    def timed_stage(self, name, items=0):  # noqa: ANN001, ANN202
        import contextlib

        stack = contextlib.ExitStack()
        stack.enter_context(stage(self, name, items))
        if clocks and name in GPU_STAGES:
            stack.enter_context(clocks[-1].span(name))
        return stack

    context.DeviceContext.__init__ = ctx_init  # type: ignore[method-assign]
    writer.WriterThread.__init__ = writer_init  # type: ignore[method-assign]
    StageTimes.stage = timed_stage  # type: ignore[method-assign]

    def write() -> None:
        gpu = {}
        for clock in clocks:
            for name, seconds in clock.seconds().items():
                gpu[name] = round(gpu.get(name, 0.0) + seconds, 6)
        path.write_text(json.dumps({"gpu_stage_seconds": gpu, **rate.report(), **memory_report(),
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
