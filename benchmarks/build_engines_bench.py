"""Time and peak memory of ``build-engines`` for both networks and precisions.

Each step runs in a fresh child process so its peak RSS is its own: the export (checkpoint load,
ONNX trace, FP16 conversion) and the engine build from that ONNX (parse, inspect, build,
serialize; repeated, median reported), and finally one end-to-end ``build-engines`` run of both
networks. Random-weight checkpoints in the released format stand in for the real ones; the graphs,
shapes and weight sizes are identical, so the timings are too.

    python benchmarks/build_engines_bench.py [--repeats 3] [--out benchmarks/results/build_engines_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "build_engines_cpu.json"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_export(model: str, precision: str, checkpoint: str, onnx_path: str) -> dict:
    from wav2lip_trt.build_engines import export_onnx

    start = time.perf_counter()
    export = export_onnx(model, checkpoint, onnx_path, precision=precision)
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(),
            "onnx_mb": Path(onnx_path).stat().st_size / 1e6, "sha256": export.sha256}


def child_build(model: str, precision: str, onnx_path: str, engine_path: str) -> dict:
    from wav2lip_trt.build_engines import BuildOptions, load_tensorrt
    from wav2lip_trt.build_engines.builder import build_engine

    rt = load_tensorrt("auto")
    before = rss_mb()
    built = build_engine(rt, onnx_path, engine_path, BuildOptions().profile(model), label=f"{model} {precision}",
                         show_progress=False)
    return {"seconds": built.seconds, "peak_rss_mb": peak_rss_mb(), "rss_before_build_mb": before,
            "engine_mb": built.bytes / 1e6, "layers": built.network.layers,
            "tensor_dtypes": built.network.tensor_dtypes, "flavor": rt.flavor.name, "version": rt.version}


def child_cli(wav2lip: str, s3fd: str, out: str) -> dict:
    from click.testing import CliRunner

    from wav2lip_trt.build_engines.command import build_engines_command

    start = time.perf_counter()
    result = CliRunner().invoke(build_engines_command, [
        "--checkpoint_path", wav2lip, "--s3fd-checkpoint", s3fd, "--out", out, "--quiet", "--json", "-"])
    if result.exit_code != 0:
        raise SystemExit(result.output)
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "report": json.loads(result.stdout)}


CHILDREN = {"export": child_export, "build": child_build, "cli": child_cli}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal:"))
    return {"hostname": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "memory_gib": round(memory_kb / 2**20, 1), "os": platform.platform(), "python": platform.python_version()}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "onnx", "onnxruntime", "onnxconverter-common", "tensorrt-rtx-cu13-bindings",
                    "tensorrt", "wav2lip-trt"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="engine builds per network and precision")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](*args.child[1:])))
        return

    from wav2lip_trt.build_engines import BuildOptions
    from wav2lip_trt.random_weights import write_random_checkpoints

    with tempfile.TemporaryDirectory(prefix="build-engines-bench-") as tmp:
        wav2lip, s3fd = write_random_checkpoints(Path(tmp) / "checkpoints", seed=0)
        checkpoints = {"s3fd": s3fd, "wav2lip": wav2lip}
        rows = []
        for model in ("s3fd", "wav2lip"):
            for precision in ("fp16", "fp32"):
                onnx = Path(tmp) / f"{model}.{precision}.onnx"
                export = run_child("export", model, precision, str(checkpoints[model]), str(onnx))
                builds = [run_child("build", model, precision, str(onnx), str(Path(tmp) / f"{model}.{precision}.engine"))
                          for _ in range(args.repeats)]
                last = builds[-1]
                row = {
                    "model": model, "precision": precision,
                    "export_seconds": round(export["seconds"], 2), "export_peak_rss_mb": round(export["peak_rss_mb"]),
                    "build_seconds_median": round(statistics.median(b["seconds"] for b in builds), 2),
                    "build_seconds_all": [round(b["seconds"], 2) for b in builds],
                    "build_peak_rss_mb": round(max(b["peak_rss_mb"] for b in builds)),
                    "rss_before_build_mb": round(last["rss_before_build_mb"]),
                    "onnx_mb": round(export["onnx_mb"], 1), "engine_mb": round(last["engine_mb"], 1),
                    "layers": last["layers"], "tensor_dtypes": last["tensor_dtypes"],
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
        cli = run_child("cli", str(wav2lip), str(s3fd), str(Path(tmp) / "engines"))
        cli_again = run_child("cli", str(wav2lip), str(s3fd), str(Path(tmp) / "engines"))

    options = BuildOptions()
    result = {
        "benchmark": "build-engines on CPU (ahead-of-time, no GPU)",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "versions": versions(),
        "tensorrt": {"flavor": last["flavor"], "version": last["version"]},
        "profiles": {"s3fd": {k: {"min": v.min, "opt": v.opt, "max": v.max} for k, v in options.profile("s3fd").items()},
                     "wav2lip": {k: {"min": v.min, "opt": v.opt, "max": v.max}
                                 for k, v in options.profile("wav2lip").items()}},
        "method": "each export and build in a fresh process; peak RSS = ru_maxrss of that process "
                  "(build processes import torch through the package, see rss_before_build_mb)",
        "results": rows,
        "end_to_end_fp16": {
            "command": "wav2lip-trt build-engines --checkpoint_path wav2lip.pth --s3fd-checkpoint s3fd.pth --out engines",
            "seconds": round(cli["seconds"], 2), "peak_rss_mb": round(cli["peak_rss_mb"]),
            "second_run_seconds": round(cli_again["seconds"], 2),
            "second_run_statuses": [r["engine_status"] for r in cli_again["report"]["results"]],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
