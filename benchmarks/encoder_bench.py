"""The host-side ceiling of a GPU run: libx264 at 1080p per --preset and thread count, fed as the writer feeds it.

A GPU host without NVENC (H100, H200) encodes on its CPU cores, so the encoder, not the GPU, sets
a run's speed unless it has enough cores. Each case pipes the same 1080p frames (synthetic talking
faces with motion) into the exact ffmpeg command :class:`wav2lip_trt.encode.VideoWriter` runs,
plus ``-threads N`` for x264 (``0`` = x264's own choice, 1.5 x the logical cores), and times it
from the first frame written to ffmpeg's exit (``fps``), and counts ffmpeg's own CPU time
(``frames_per_cpu_second``: the encoder's cost in core-seconds a frame, which a busy host inflates
far less than the wall time):

- ``bgr24``: the CPU path's input; ffmpeg converts with swscale (``accurate_rnd``) before x264.
- ``yuv420p``: the GPU path's input, converted on the device (:mod:`wav2lip_trt.kernels.yuv`).
- ``feed``: the same yuv420p frames into ``-f null`` with no encoder: what the pipe and the
  writer's ``write`` calls alone allow.

    python benchmarks/encoder_bench.py [--frames 96] [--out benchmarks/results/encoder_cpu.json]
    python benchmarks/encoder_bench.py --smoke      # 8 frames of 320x180, to check the script; no file
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
PRESETS = ("ultrafast", "veryfast", "faster", "medium")
THREADS = (1, 2, 0)  # 0: x264's default (1.5 x logical cores)


def frames_for(width: int, height: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    from wav2lip_trt.kernels.yuv import bgr_to_yuv420
    from wav2lip_trt.samples import talking_face_frames

    bgr = np.stack(list(talking_face_frames(count, width, height, seed=7)))
    return bgr, bgr_to_yuv420(torch.from_numpy(bgr)).numpy()


def run_case(frames: np.ndarray, width: int, height: int, pixel_format: str, preset: str | None, threads: int,
             folder: Path) -> dict:
    """Frames per second from the first write to ffmpeg's exit; ``preset`` None = no encoder (pipe only)."""
    from wav2lip_trt.encode import VideoWriter

    writer = VideoWriter(folder / "out.mp4", width=width, height=height, fps=25.0, audio=None, encoder="libx264",
                         preset=preset or "medium", pixel_format=pixel_format)
    cmd = writer.command(folder / "out.mp4")
    if preset is None:
        cmd = cmd[: cmd.index("-c:v")] + ["-f", "null", "-"]
    else:
        cmd = cmd[:-1] + ["-threads", str(threads), str(folder / "out.mp4")]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    for frame in frames:
        proc.stdin.write(np.ascontiguousarray(frame).data)
    proc.stdin.close()
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)  # the child's own CPU time: what it costs, however busy the host is
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {err.decode(errors='replace')[-500:]}")
    seconds = time.perf_counter() - start
    cpu = usage.ru_utime + usage.ru_stime
    return {"input": pixel_format, "preset": preset, "threads": threads if preset else None, "frames": len(frames),
            "seconds": round(seconds, 3), "fps": round(len(frames) / seconds, 1), "cpu_seconds": round(cpu, 3),
            "frames_per_cpu_second": round(len(frames) / cpu, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--out", type=Path, default=RESULTS / "encoder_cpu.json")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    from wav2lip_trt.measure import machine_info

    width, height, count = (320, 180, 8) if args.smoke else (1920, 1080, args.frames)
    bgr, yuv = frames_for(width, height, count)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows.append(run_case(yuv, width, height, "yuv420p", None, 0, folder))
        print(rows[-1], flush=True)
        for preset in PRESETS if not args.smoke else ("veryfast",):
            for threads in THREADS:
                for pixel_format, frames in (("bgr24", bgr), ("yuv420p", yuv)):
                    rows.append(run_case(frames, width, height, pixel_format, preset, threads, folder))
                    print(rows[-1], flush=True)
    if args.smoke:
        return 0
    report = {"machine": machine_info(), "load_average": os.getloadavg(), "size": f"{width}x{height}", "cases": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
