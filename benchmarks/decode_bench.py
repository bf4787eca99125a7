"""Decode throughput: OpenCV (the reference-exact decoder) against DALI, at 720p and 1080p.

Each resolution gets a generated clip (testsrc2, ``--seconds`` long at 25 fps) in the codecs
each decoder can read: H.264 (what users feed; OpenCV anywhere, DALI only through NVDEC), VP9 and
MJPEG (the codecs DALI also decodes on CPU). Every case runs ``open_decoder(...)`` and iterates
all batches to the end, ``--repeats`` times; the time includes opening the input and building the
DALI pipeline, as a real run pays it. On CUDA the clock stops after ``torch.cuda.synchronize()``.
Decoded frames stay on the device they are decoded for (CPU tensors, or CUDA tensors through the
pinned ring / NVDEC), so the numbers are what the pipeline's decode stage can deliver.

    python benchmarks/decode_bench.py [--seconds 10] [--repeats 3] [--out benchmarks/results/decode_<device>.json]
    python benchmarks/decode_bench.py --smoke     # a 1 s 160x128 clip, to check the script; no file
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

RESULTS = Path(__file__).parent / "results"
RESOLUTIONS = {"720p": (1280, 720), "1080p": (1920, 1080)}
CODECS = {  # name: (suffix, ffmpeg arguments)
    "h264": ("mp4", ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p"]),
    "vp9": ("webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "4M", "-pix_fmt", "yuv420p"]),
    "mjpeg": ("avi", ["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p"]),
}  # fmt: skip
DALI_CPU_CODECS = ("vp9", "mjpeg")


def make_clip(folder: Path, codec: str, width: int, height: int, seconds: float) -> Path:
    from media import run_ffmpeg

    suffix, args = CODECS[codec]
    path = folder / f"{codec}_{width}x{height}.{suffix}"
    run_ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=25:duration={seconds}", *args, path)
    return path


def anon_rss_mb() -> float | None:
    """Resident anonymous memory (heap, not mapped files), Linux only."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_case(path: Path, kind: str, device: torch.device, batch: int, repeats: int) -> dict:
    from wav2lip_trt.decode import open_decoder

    cuda = device.type == "cuda"
    samples, first_batch, frames, peak = [], [], 0, 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        decoder = open_decoder(path, kind=kind, device=device, batch=batch)
        frames, first = 0, None
        for chunk in decoder.frames():
            frames += chunk.shape[0]
            if first is None:
                if cuda:
                    torch.cuda.synchronize()
                first = time.perf_counter() - start
            peak = max(peak, anon_rss_mb() or 0.0)
        if cuda:
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
        first_batch.append(first)
        del decoder
    seconds = statistics.median(samples)
    return {
        "decoder": kind, "device": str(device), "frames": frames, "batch": batch, "repeats": repeats,
        "median_seconds": round(seconds, 4), "fps": round(frames / seconds, 1),
        "best_fps": round(frames / min(samples), 1), "first_batch_seconds": round(statistics.median(first_batch), 4),
        "peak_anon_rss_mb": round(peak, 1) if peak else None,
    }  # fmt: skip


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (25 fps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="frames per decoded batch")
    parser.add_argument("--resolutions", nargs="+", default=list(RESOLUTIONS), choices=list(RESOLUTIONS))
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default results/decode_<device>.json)")
    parser.add_argument("--smoke", action="store_true", help="a tiny clip, to check the script; no file")
    args = parser.parse_args()

    from wav2lip_trt.decode import dali_available
    from wav2lip_trt.measure import machine_info

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dali = dali_available()
    resolutions = {"smoke": (160, 128)} if args.smoke else {r: RESOLUTIONS[r] for r in args.resolutions}
    seconds, repeats = (1.0, 1) if args.smoke else (args.seconds, args.repeats)
    cases: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="decode_bench_") as tmp:
        for name, (width, height) in resolutions.items():
            for codec in CODECS:
                path = make_clip(Path(tmp), codec, width, height, seconds)
                plan = [("opencv", torch.device("cpu"))]
                if device.type == "cuda":
                    plan += [("opencv", device)] + ([("dali", device)] if dali else [])
                elif dali and codec in DALI_CPU_CODECS:
                    plan.append(("dali", device))
                for kind, where in plan:
                    row = {"resolution": name, "width": width, "height": height, "codec": codec,
                           "encoded_mb": round(path.stat().st_size / 2**20, 2)}
                    row.update(run_case(path, kind, where, args.batch, repeats))
                    cases.append(row)
                    print(f"{name:6} {codec:6} {kind:7} {row['device']:6} {row['fps']:8.1f} fps "
                          f"(first batch {row['first_batch_seconds']:.3f} s, anon RSS {row['peak_anon_rss_mb']} MB)")

    notes = [
        "OpenCV decodes on the CPU in every case; on CUDA its batches are uploaded through pinned buffers.",
        "DALI's YUV->RGB differs from OpenCV's by a few levels: it is the fast path, never the parity path.",
        "peak_anon_rss_mb is the whole process's anonymous resident memory, sampled after every batch "
        "(it includes what earlier cases and imports left behind).",
    ]
    if device.type != "cuda":
        notes.append("DALI GPU (NVDEC/nvJPEG) numbers need a CUDA GPU: not measured on this machine. "
                     "DALI on CPU decodes only VP8/VP9/MJPEG, so it is not measured on H.264 here.")
    if not dali:
        notes.append("NVIDIA DALI is not installed: no DALI numbers (pip install 'wav2lip-trt[dali]').")
    report = {
        "benchmark": "decode", "machine": machine_info(), "device": str(device), "dali_installed": dali,
        "clip_seconds": seconds, "clip_fps": 25, "source": "lavfi testsrc2", "notes": notes, "cases": cases,
    }  # fmt: skip
    if args.smoke and args.out is None:
        print(f"smoke run ok: {len(cases)} measurements (no file written)")
        return 0
    out = args.out or RESULTS / f"decode_{device_slug(device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
