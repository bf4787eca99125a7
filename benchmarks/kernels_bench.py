"""Time the device kernels (wav2lip_trt.kernels) against their torch references and the reference CPU code.

Stages, at 720p and 1080p: S3FD pre-processing and the face choice (detection batch, default 16),
the full NMS detection lists, crop -> 6-channel generator input and paste-back (generator batch,
default 128). For each stage: the Triton kernel and the torch reference on the GPU (frames already
on the device, CUDA-synchronised wall time), and the reference pipeline's CPU code on host arrays
(``detect``/``faces``, as the original runs it). Every GPU result is also checked against the
torch reference. Needs an NVIDIA GPU and triton; elsewhere it prints why and exits 0.

    python benchmarks/kernels_bench.py [--repeats 20] [--out benchmarks/results/kernels_<gpu>.json]
    python benchmarks/kernels_bench.py --smoke     # tiny sizes, any device: checks the script, no file
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from wav2lip_trt.models.s3fd import head_map_sizes

RESULTS = Path(__file__).parent / "results"
RESOLUTIONS = {"720p": (720, 1280), "1080p": (1080, 1920)}


def timed(fn: Callable[[], object], repeats: int, warmup: int, cuda: bool) -> dict[str, float]:
    """Median and min wall time in milliseconds; CUDA work is synchronised around every call."""
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "repeats": repeats}


def synthetic_s3fd_outputs(batch: int, height: int, width: int, seed: int) -> list[torch.Tensor]:
    """Raw head outputs with a sparse background (~0.1% of positions above 0.05) and one face blob.

    Random weights give ~1500 faces per image, far more than the real S3FD on a face video;
    this keeps the reference's candidate count (its cost) in a realistic range.
    """
    rng = np.random.default_rng(seed)
    outputs = []
    for level, (h, w) in enumerate(head_map_sizes(height, width)):
        cls = np.zeros((batch, 2, h, w), dtype=np.float32)
        cls[:, 1] = rng.normal(-9.0, 2.0, (batch, h, w))
        if level in (3, 4):
            cy, cx = h // 2, w // 2
            cls[:, 1, max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2] = rng.uniform(2, 6, (batch, 1, 1))
        reg = rng.normal(0, 0.3, (batch, 4, h, w)).astype(np.float32)
        outputs += [torch.from_numpy(cls), torch.from_numpy(reg)]
    return outputs


def face_boxes(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """(count, 4) y1, y2, x1, x2: a face about a third of the frame high, drifting a little."""
    rng = np.random.default_rng(seed)
    size = height // 3
    cy = height // 2 + rng.integers(-size // 8, size // 8 + 1, count)
    cx = width // 2 + rng.integers(-size // 8, size // 8 + 1, count)
    h = size + rng.integers(-10, 11, count)
    w = (size * 4) // 5 + rng.integers(-10, 11, count)
    y1, x1 = np.clip(cy - h // 2, 0, height - 1), np.clip(cx - w // 2, 0, width - 1)
    return np.stack([y1, np.minimum(y1 + h, height), x1, np.minimum(x1 + w, width)], axis=1).astype(np.int64)


def bench_resolution(name: str, height: int, width: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    from wav2lip_trt import detect, faces, kernels
    from wav2lip_trt.samples import talking_face_frames

    cuda = device.type == "cuda"
    rows: list[dict] = []

    def record(stage: str, impl: str, batch: int, timing: dict, **extra: object) -> None:
        row = {"stage": stage, "resolution": name, "height": height, "width": width, "batch": batch, "impl": impl,
               **timing, "per_frame_us": timing["median_ms"] * 1e3 / batch, **extra}
        rows.append(row)
        print(f"{name:>6} {stage:<22} {impl:<10} batch {batch:>4}: {timing['median_ms']:9.3f} ms median "
              f"({row['per_frame_us']:8.1f} us/frame)", flush=True)

    def gpu(stage: str, batch: int, run: Callable[[str], object], same: Callable[[object, object], bool]) -> None:
        reference = run("torch")
        for impl in ("triton", "torch"):
            timing = timed(lambda: run(impl), args.repeats, args.warmup, cuda)
            equal = bool(same(run(impl), reference)) if impl == "triton" else True
            record(stage, impl, batch, timing, equals_torch=equal)

    def cpu(stage: str, batch: int, fn: Callable[[], object]) -> None:
        record(stage, "cpu_reference", batch, timed(fn, args.cpu_repeats, 1, False))

    det = args.detect_batch
    base = list(talking_face_frames(min(det, 8), width, height, seed=1))
    host = np.stack([base[i % len(base)] for i in range(max(det, args.generator_batch))])
    frames_det = torch.from_numpy(host[:det]).to(device)

    # S3FD pre-processing
    for dtype in (torch.float32, torch.float16):
        label = f"s3fd_preprocess_{'fp16' if dtype == torch.float16 else 'fp32'}"
        gpu(label, det, lambda impl: kernels.s3fd_preprocess(frames_det, dtype, impl=impl), torch.equal)
    cpu("s3fd_preprocess_fp32", det, lambda: detect.preprocess(host[:det]))

    # S3FD post-processing
    outputs_host = synthetic_s3fd_outputs(det, height, width, seed=2)
    outputs = [o.to(device) for o in outputs_host]
    gpu("s3fd_choose_faces", det, lambda impl: kernels.choose_faces_device(outputs, impl=impl).boxes,
        torch.equal)
    cpu("s3fd_choose_faces", det, lambda: detect.choose_faces(outputs_host))
    gpu("s3fd_detections_nms", det, lambda impl: kernels.detections_device(outputs, impl=impl),
        lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b)))
    cpu("s3fd_detections_nms", det, lambda: detect.detections_per_image(outputs_host))

    # crop -> generator input
    gen = args.generator_batch
    frames_gen = torch.from_numpy(host[:gen]).to(device)
    boxes = face_boxes(gen, height, width, seed=3)
    boxes_dev = torch.from_numpy(boxes).to(device)
    mel = np.random.default_rng(4).uniform(-4, 4, (80, gen + 16))
    mel_dev = torch.from_numpy(mel).to(device)
    starts = np.arange(gen)
    starts_dev = torch.from_numpy(starts).to(device)
    gpu("crop_generator_input", gen,
        lambda impl: kernels.crop_to_generator_input(frames_gen, boxes_dev, mel_dev, starts_dev, impl=impl),
        lambda a, b: torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]))
    box_list = [tuple(b) for b in boxes.tolist()]
    chunks = np.stack([mel[:, s : s + 16] for s in starts])
    cpu("crop_generator_input", gen,
        lambda: faces.generator_inputs(faces.crop_faces(list(host[:gen]), box_list), chunks))

    # paste-back
    pred = torch.rand((gen, 3, 96, 96), generator=torch.Generator().manual_seed(5)).to(device)
    pred_host = pred.cpu().numpy()
    canvas = frames_gen.clone()
    for blend in ("none", "feather"):
        def paste(impl: str, blend: str = blend) -> torch.Tensor:
            canvas.copy_(frames_gen)
            return kernels.paste_back_batch(canvas, pred, boxes, blend, impl=impl).clone()

        gpu(f"paste_back_{blend}", gen, paste, torch.equal)
    work = host[:gen].copy()

    def paste_cpu() -> None:
        generated = faces.prediction_to_uint8(pred_host)
        for frame, face, box in zip(work, generated, box_list):
            faces.paste_back(frame, face, box)

    cpu("paste_back_none", gen, paste_cpu)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", default="720p,1080p", help="comma-separated: " + ", ".join(RESOLUTIONS))
    parser.add_argument("--detect-batch", type=int, default=16, help="frames per S3FD batch (reference default 16)")
    parser.add_argument("--generator-batch", type=int, default=128, help="items per Wav2Lip batch (reference 128)")
    parser.add_argument("--repeats", type=int, default=20, help="timed GPU calls per measurement")
    parser.add_argument("--cpu-repeats", type=int, default=3, help="timed calls of the reference CPU code")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (Triton compiles on the first)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default results/kernels_<gpu>.json)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any device, to check the script; no file")
    args = parser.parse_args()

    from wav2lip_trt.kernels import triton_available
    from wav2lip_trt.measure import machine_info

    if not triton_available():
        print("kernels_bench: skipped: the triton package is not installed (pip install 'wav2lip-trt[triton]')")
        return 0
    if args.smoke:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        resolutions = {"smoke": (72, 96)}
        args.detect_batch, args.generator_batch, args.repeats, args.cpu_repeats, args.warmup = 2, 3, 1, 1, 0
    elif not torch.cuda.is_available():
        print("kernels_bench: skipped: needs an NVIDIA GPU (torch.cuda.is_available() is False); "
              "CPU timings of Triton's interpreter would mean nothing. Use --smoke to check the script.")
        return 0
    else:
        device = torch.device("cuda")
        unknown = [r for r in args.resolutions.split(",") if r not in RESOLUTIONS]
        if unknown:
            parser.error(f"unknown resolution(s) {unknown}; choose from {', '.join(RESOLUTIONS)}")
        resolutions = {r: RESOLUTIONS[r] for r in args.resolutions.split(",")}

    rows = []
    for name, (height, width) in resolutions.items():
        rows += bench_resolution(name, height, width, args, device)
    report = {
        "benchmark": "kernels", "machine": machine_info(), "device": str(device),
        "config": {"detect_batch": args.detect_batch, "generator_batch": args.generator_batch,
                   "repeats": args.repeats, "cpu_repeats": args.cpu_repeats, "warmup": args.warmup,
                   "timing": "wall clock with torch.cuda.synchronize() around each call; inputs already on device",
                   "s3fd_outputs": "synthetic, ~0.1% background positions above 0.05 plus one face blob"},
        "results": rows,
    }
    mismatches = [r for r in rows if not r.get("equals_torch", True)]
    for row in mismatches:
        print(f"warning: {row['stage']} at {row['resolution']}: Triton result differs from the torch reference")
    if args.smoke and args.out is None:
        print(f"smoke run ok: {len(rows)} measurements, {len(mismatches)} mismatches (no file written)")
        return 1 if mismatches else 0
    import re

    slug = re.sub(r"[^a-z0-9]+", "_", str(report["machine"].get("gpu", "cpu")).lower()).strip("_")
    out = args.out or RESULTS / f"kernels_{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
