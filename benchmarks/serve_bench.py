"""Twenty concurrent clients against ``wav2lip-trt serve``, side by side with ``batch`` on the same jobs.

The jobs of ``jobs_bench.py`` (one generated 320x240 face clip, twenty different 1 s speech-like
audios, a fixed box, random-weight checkpoints in the released format, CPU). Per round:

* ``batch``: one ``wav2lip-trt batch`` command with N workers, timed from outside (its workers'
  start-up included, as a user of ``batch`` pays it every time);
* ``serve``: a server with N workers is started and waited for (``/readyz``; that start-up is
  reported apart, since a service pays it once), then twenty client threads each upload their job,
  follow its events to the end and download the result. Throughput = jobs / (first upload to last
  download); latency = a client's upload to its downloaded result (p50, p95).

Rounds alternate the order; each mode's best round is reported (other work on a shared machine only
ever slows a round down), with the load average before and after.

    python benchmarks/serve_bench.py                      # ~3 min on 2 quiet cores; writes results/serve_cpu.json
    python benchmarks/serve_bench.py --jobs 3 --rounds 1 --smoke   # checks the script; writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from jobs_bench import BOX, RESULTS, _cpu_model, make_inputs, run_batch  # noqa: E402


def run_serve(face: Path, audios: list[Path], checkpoint: Path, out: Path, workers: int) -> dict:
    import httpx

    out.mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with open(out / "serve.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "wav2lip_trt", "serve", "--checkpoint_path", str(checkpoint),
                                   "--device", "cpu", "--workers", str(workers), "--port", str(port),
                                   "--state-dir", str(out / "state"), "--queue-size", str(len(audios))],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"serve exited: {(out / 'serve.log').read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        ready = time.perf_counter() - started

        def client(index: int) -> tuple[float, dict]:
            begun = time.perf_counter()
            with httpx.Client(base_url=url, timeout=300) as http, open(face, "rb") as f, \
                    open(audios[index], "rb") as a:
                job = http.post("/v1/jobs", files={"face": (face.name, f), "audio": (audios[index].name, a)},
                                data={"options": json.dumps({"box": list(BOX)})}).json()
                end = None
                with http.stream("GET", f"/v1/jobs/{job['id']}/events") as events:
                    for line in events.iter_lines():
                        if line.startswith("data: ") and '"finished":' in line and '"status":"succeeded"' in line:
                            end = json.loads(line[6:])
                            break
                if end is None:
                    raise SystemExit(f"job {index} did not succeed: {http.get('/v1/jobs/' + job['id']).text}")
                (out / f"{index:02d}.mp4").write_bytes(http.get(end["result"]).content)
            return time.perf_counter() - begun, end["report"]

        first = time.perf_counter()
        with ThreadPoolExecutor(len(audios)) as pool:
            results = list(pool.map(client, range(len(audios))))
        wall = time.perf_counter() - first
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)
    if code != 0:
        raise SystemExit(f"serve exited with {code} after SIGTERM")
    latencies = sorted(latency for latency, _ in results)
    in_session = [report["seconds"] for _, report in results]
    return {
        "mode": f"serve ({workers} workers)", "jobs": len(audios), "workers": workers,
        "wall_seconds": round(wall, 2), "jobs_per_second": round(len(audios) / wall, 3),
        "jobs_per_second_with_startup": round(len(audios) / (wall + ready), 3),
        "startup_seconds": round(ready, 2),
        "latency_p50_seconds": round(statistics.median(latencies), 2),
        "latency_p95_seconds": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2),
        "job_seconds_in_session_median": round(statistics.median(in_session), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--size", default="240x320", metavar="HxW")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_cpu.json")
    parser.add_argument("--smoke", action="store_true", help="run, print, write no file")
    args = parser.parse_args()
    height, width = map(int, args.size.split("x"))

    from wav2lip_trt.jobs.local import cpu_cores, default_workers
    from wav2lip_trt.measure import machine_record
    from wav2lip_trt.random_weights import write_random_checkpoints

    workers = default_workers("cpu", cpu_cores())
    load_before = os.getloadavg()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        folder = Path(tmp)
        checkpoint, _ = write_random_checkpoints(folder / "checkpoints", seed=0)
        face, audios = make_inputs(folder, args.jobs, args.seconds, width, height)
        runs = {
            "batch": lambda out: run_batch(face, audios, checkpoint, out, "--workers", str(workers),
                                           label=f"batch ({workers} workers)"),
            "serve": lambda out: run_serve(face, audios, checkpoint, out, workers),
        }
        for index in range(args.rounds):
            order = list(runs) if index % 2 == 0 else list(reversed(runs))
            done = {name: runs[name](folder / f"round{index}" / name) for name in order}
            rounds.append([done[name] for name in runs])
    batch, serve = (max(tries, key=lambda mode: mode["jobs_per_second"]) for tries in zip(*rounds))
    ratio = round(serve["jobs_per_second"] / batch["jobs_per_second"], 3)
    ratio_startup = round(serve["jobs_per_second_with_startup"] / batch["jobs_per_second"], 3)
    record = {
        "benchmark": "serve", "jobs": args.jobs, "audio_seconds": args.seconds, "size": f"{width}x{height}",
        "box": list(BOX), "device": "cpu", "workers": workers,
        "machine": {**machine_record(), "cpu_model": _cpu_model()},
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "batch": batch, "serve": serve, "serve_vs_batch": ratio, "serve_with_startup_vs_batch": ratio_startup,
        "rounds": rounds,
    }
    print(f"{batch['mode']:<20} {batch['wall_seconds']:7.1f} s  {batch['jobs_per_second']:.3f} jobs/s")
    print(f"{serve['mode']:<20} {serve['wall_seconds']:7.1f} s  {serve['jobs_per_second']:.3f} jobs/s "
          f"({ratio:.0%} of batch; {ratio_startup:.0%} counting its {serve['startup_seconds']:.1f} s start-up)  "
          f"latency p50 {serve['latency_p50_seconds']:.1f} s, p95 {serve['latency_p95_seconds']:.1f} s")
    print(f"load average before/after: {record['load_average_before_after']}")
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
