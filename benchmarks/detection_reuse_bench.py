"""Detect once, reuse everywhere: what the detection cache, several audios and sparse/scaled detection save.

Whole ``wav2lip-trt`` processes on a generated 720p clip with random-weight checkpoints, CPU:

(a) first run (cache miss) vs second run on the same face with another audio (cache hit);
(b) four audios in one command vs four separate ``infer`` runs (both without the disk cache, so
    the one command gains only from detecting once in memory);
(c) ``--detect-every 5`` and ``--detect-size 480`` vs full detection: speed, and the IoU of each
    frame's chosen box against full-resolution every-frame detection.

    python benchmarks/detection_reuse_bench.py [--seconds 0.6] [--repeats 2]   # ~15 min on 2 cores

Writes ``benchmarks/results/detection_reuse_cpu.json``. Pairs run alternately (A, B, A, B) and
ratios are per pair, so a machine whose speed drifts still gives fair ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wav2lip_trt.measure import machine_info, run_measured  # noqa: E402
from wav2lip_trt.random_weights import write_random_checkpoints  # noqa: E402
from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "detection_reuse_cpu.json"


def infer(ck: tuple[Path, Path], face: Path, audios: list[Path], out: str, cache: Path, *extra: str) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "wav2lip_trt", "infer", "-q", "--device", "cpu", "--checkpoint_path", str(ck[0]),
           "--s3fd-checkpoint", str(ck[1]), "--face", str(face), "--outfile", out, "--on-missing-face", "previous",
           "--cache-dir", str(cache), *extra]
    for audio in audios:
        cmd += ["--audio", str(audio)]
    m = run_measured(cmd)
    if m.returncode != 0:
        raise RuntimeError(m.stderr)
    return m.seconds, m.stderr


def iou(a: np.ndarray, b: np.ndarray) -> float:
    if a[0] < 0 or b[0] < 0:
        return float(a[0] < 0 and b[0] < 0)
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x2 - x1) * max(0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=0.6, help="clip length (720p S3FD on this CPU: ~5 s a frame)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    record: dict = {"machine": machine_info(), "clip": f"1280x720, {args.seconds:g} s at 25 fps", "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="w2l-reuse-") as tmp:
        d = Path(tmp)
        ck = write_random_checkpoints(d / "ck")
        frames = int(round(args.seconds * 25))
        face = write_video(d / "face.mp4", talking_face_frames(frames, 1280, 720, seed=2), 25.0)
        audios = [write_wav(d / f"lang{i}.wav", float_to_int16(speechlike_audio(args.seconds, seed=i)), 16000)
                  for i in range(4)]

        pairs = []
        for r in range(args.repeats):
            cache = d / f"cache-a{r}"
            first, _ = infer(ck, face, [audios[0]], str(d / "a1.mp4"), cache)
            second, log = infer(ck, face, [audios[1]], str(d / "a2.mp4"), cache, "--json", "-")
            pairs.append((first, second))
        record["a_cache"] = _pairs(pairs, "first run (miss)", "second run (hit)")

        pairs = []
        for r in range(args.repeats):
            start = time.perf_counter()
            for i, audio in enumerate(audios):
                infer(ck, face, [audio], str(d / f"sep{i}.mp4"), d / "nocache", "--no-cache")
            separate = time.perf_counter() - start
            one, _ = infer(ck, face, audios, str(d / "many" / "{audio}.mp4"), d / "nocache", "--no-cache")
            pairs.append((separate, one))
        record["b_four_audios"] = _pairs(pairs, "four separate infer runs", "one command, four audios")

        runs = {}
        for name, extra in (("full", ()), ("every5", ("--detect-every", "5")), ("size480", ("--detect-size", "480"))):
            seconds = []
            for r in range(args.repeats):
                dump = d / f"dump-{name}"
                shutil.rmtree(dump, ignore_errors=True)
                s, _ = infer(ck, face, [audios[0]], str(d / f"c-{name}.mp4"), d / "nocache", "--no-cache",
                             "--dump-intermediates", str(dump), *extra)
                seconds.append(s)
            runs[name] = {"median_seconds": round(statistics.median(seconds), 2),
                          "det_boxes": np.load(d / f"dump-{name}" / "det_boxes.npy")}
        full = runs["full"]["det_boxes"]
        record["c_sparse_scaled"] = {}
        for name in ("every5", "size480"):
            ious = [iou(a, b) for a, b in zip(runs[name]["det_boxes"], full)]
            record["c_sparse_scaled"][name] = {
                "median_seconds": runs[name]["median_seconds"], "full_median_seconds": runs["full"]["median_seconds"],
                "speedup": round(runs["full"]["median_seconds"] / runs[name]["median_seconds"], 2),
                "iou_mean": round(float(np.mean(ious)), 3), "iou_min": round(float(np.min(ious)), 3),
                "frames_iou_below_0.5": int(sum(v < 0.5 for v in ious)),
            }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "machine"}, indent=2))


def _pairs(pairs: list[tuple[float, float]], a: str, b: str) -> dict:
    return {"a": a, "b": b, "a_seconds": [round(x, 2) for x, _ in pairs], "b_seconds": [round(y, 2) for _, y in pairs],
            "ratio_a_over_b_median": round(statistics.median(x / y for x, y in pairs), 2)}


if __name__ == "__main__":
    main()
