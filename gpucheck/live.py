"""The live lip-sync on the GPU: one 1080p stream paced at real time, then how many 720p streams keep up.

    python3 -m gpucheck.live --checkpoint CKPT --out FILE.json [--rehearsal] [--seconds-left S]

A child process (the step runs it under its cap): torch backend, FP16 on CUDA (FP32 on the CPU in the
rehearsal), a generated face image as the avatar with a fixed box (no detection), speech-like audio
fed in 200 ms chunks at real time, 25 fps. The JSON is rewritten after each measurement, so a child
stopped at the cap still leaves what it measured; :func:`gpucheck.verdicts.judge_live` judges it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import StepContext
    from .steps import Config

FPS = 25.0
CHUNK_S = 0.2
LEVELS = (1, 2, 4, 8, 16, 24, 32, 40, 48)  # concurrent streams tried, in order, until one falls behind


def measure_args(ctx: StepContext, cfg: Config) -> list[str]:
    """The child's command line for one step (the GPU's sizes, or the rehearsal's)."""
    wav2lip, _ = ctx.state["checkpoints"]
    args = [sys.executable, "-m", "gpucheck.live", "--checkpoint", str(wav2lip), "--out", str(ctx.out / "live.json"),
            "--seconds-left", f"{max(ctx.remaining() - 3, 1):.1f}"]
    return args + (["--rehearsal"] if cfg.rehearsal else [])


def step_live(cfg: Config):  # noqa: ANN201
    """One 1080p FP16 stream at real time (25 fps, p95 chunk latency <= 350 ms), then the 720p streams one GPU
    sustains."""
    from .logs import last_line
    from .runner import run_logged
    from .staging import child_env
    from .verdicts import Verdict, judge_live

    def run(ctx: StepContext) -> Verdict:
        log, report = ctx.out / "live.log", ctx.out / "live.json"
        proc = run_logged(measure_args(ctx, cfg), log, ctx.remaining(), env=child_env())
        ctx.add_file(log)
        data = json.loads(report.read_text()) if report.is_file() else {}
        if report.is_file():
            ctx.add_file(report)
        if proc.returncode not in (0, None) and "single" not in data:
            data["error"] = f"exited {proc.returncode}: {last_line(proc.text)}"
        elif proc.timed_out and "single" not in data:
            data["error"] = f"timed out after {proc.seconds:.0f} s"
        verdict = judge_live(data, judged=not cfg.rehearsal)
        ctx.markdown += live_table(data)
        return verdict
    return run


def live_table(data: dict[str, Any]) -> list[str]:
    rows = [("single", data["single"])] if "single" in data else []
    rows += [(f"{c['streams']} x {c['size']}", c) for c in data.get("concurrent", [])]
    lines = ["| run | streams | frames | dropped | worst lag after the audio s | worst p95 latency ms | held |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r.get('streams', 1)} | {r.get('frames')} | {r.get('dropped')} | {r.get('lag_s')} | "
                     f"{r.get('p95_ms')} | {r.get('held')} |")
    return lines if rows else []


# ---- the child ------------------------------------------------------------------------------------------


def paced_stream(session: Any, avatar: Any, wav: Any, start: threading.Barrier | None = None) -> dict[str, Any]:
    """Feed ``wav`` in 200 ms chunks at real time from a thread, take every frame; the stream's report."""
    from wav2lip_trt.live.sources import file_chunks

    failure: list[BaseException] = []
    if start is not None:
        start.wait()
    with session.stream(avatar) as live:
        def produce() -> None:
            try:
                for piece in file_chunks(wav, CHUNK_S, realtime=True):
                    live.feed(piece)
                live.close()
            except BaseException as exc:  # noqa: BLE001  reported with the stream
                failure.append(exc)
                live.abort()

        feeder = threading.Thread(target=produce, name="gpu-check-live-feed", daemon=True)
        feeder.start()
        for _ in live:
            pass
        feeder.join()
    report = live.stats.report()
    report["expected_frames"] = live.total  # the offline frame count of this audio, known on close
    if failure:
        report["error"] = f"{type(failure[0]).__name__}: {failure[0]}"
    return report


def summarise(reports: Sequence[dict[str, Any]], size: str) -> dict[str, Any]:
    """A run of one or more streams: held when every stream gave all its frames, dropped none, and its last
    frame came at most LAG_S after its audio ended (a stream slower than real time falls further behind)."""
    from .verdicts import LIVE_LAG_S

    expected = max(r.get("expected_frames") or 1 for r in reports)
    errors = [r["error"] for r in reports if r.get("error")]
    lag = max(r["seconds"] - r["audio_seconds"] for r in reports)
    p95 = [r["latency_ms"]["p95"] for r in reports if r["latency_ms"]["p95"] is not None]
    frames = min(r["frames"] for r in reports)
    dropped = sum(r["dropped"] for r in reports)
    return {"streams": len(reports), "size": size, "frames": frames, "expected_frames": expected, "dropped": dropped,
            "lag_s": round(lag, 3), "p95_ms": max(p95) if p95 else None,
            "fps": min(r["frames_per_second"] or 0 for r in reports),
            "held": not errors and frames >= expected and dropped == 0 and lag <= LIVE_LAG_S,
            **({"error": errors[0]} if errors else {})}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m gpucheck.live", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rehearsal", action="store_true", help="CPU FP32, 96x96, 0.6 s of audio, 1 and 2 streams")
    parser.add_argument("--seconds-left", type=float, default=25.0, help="stop trying more streams after this")
    args = parser.parse_args(argv)
    deadline = time.perf_counter() + args.seconds_left

    import cv2

    from wav2lip_trt.samples import speechlike_audio, talking_face_frames
    from wav2lip_trt.session import Session

    sizes = {"single": (96, 96), "concurrent": (96, 96)} if args.rehearsal else {
        "single": (1920, 1080), "concurrent": (1280, 720)}
    single_s, level_s = (0.6, 0.6) if args.rehearsal else (3.0, 2.0)
    levels = LEVELS[:2] if args.rehearsal else LEVELS
    device, precision = ("cpu", "fp32") if args.rehearsal else ("cuda", "fp16")
    data: dict[str, Any] = {"device": device, "precision": precision, "backend": "torch", "fps": FPS,
                            "chunk_ms": int(CHUNK_S * 1000), "concurrent": []}

    def save() -> None:
        args.out.write_text(json.dumps(data, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="gpu-check-live-") as tmp, \
            Session(args.checkpoint, None, device=device, backend="torch", precision=precision) as session:
        avatars: dict[str, Any] = {}
        for name, (w, h) in sizes.items():
            if (w, h) in [a[2] for a in avatars.values()]:  # the rehearsal's one size: one avatar, one warm-up
                avatars[name] = next(a for a in avatars.values() if a[2] == (w, h))
                continue
            image = Path(tmp) / f"face-{w}x{h}.png"
            cv2.imwrite(str(image), next(talking_face_frames(1, w, h, seed=2)))
            side = h * 2 // 5  # a face 40 % of the frame's height, centred: a presenter's close-up
            box = ((h - side) // 2, (h + side) // 2, (w - side) // 2, (w + side) // 2)
            avatars[name] = (session.avatar(image, box=box, fps=FPS), f"{w}x{h}", (w, h))
        warm = speechlike_audio(0.5, seed=3)
        for avatar, _, _ in {id(a[0]): a for a in avatars.values()}.values():  # load, autotuning, capture: unmeasured
            with session.stream(avatar) as live:
                live.feed(warm)
                live.close()
                for _ in live:
                    pass
        avatar, size, _ = avatars["single"]
        data["single"] = summarise([paced_stream(session, avatar, speechlike_audio(single_s, seed=1))], size)
        save()
        avatar, size, _ = avatars["concurrent"]
        wav = speechlike_audio(level_s, seed=1)
        for n in levels:
            if time.perf_counter() + level_s + 2.0 > deadline and not (args.rehearsal and n == 2):
                data["stopped"] = f"out of time before {n} streams"
                break
            reports: list[dict[str, Any]] = [{}] * n
            start = threading.Barrier(n)

            def one(i: int) -> None:
                try:
                    reports[i] = paced_stream(session, avatar, wav, start)
                except Exception as exc:  # noqa: BLE001  a stream that could not run did not hold
                    reports[i] = {"error": f"{type(exc).__name__}: {exc}", "frames": 0, "dropped": 0, "seconds": 0.0,
                                  "audio_seconds": 0.0, "latency_ms": {"p95": None}, "frames_per_second": 0}

            threads = [threading.Thread(target=one, args=(i,), name=f"gpu-check-live-{i}") for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            data["concurrent"].append(summarise(reports, size))
            save()
            if not data["concurrent"][-1]["held"] and not args.rehearsal:  # the rehearsal runs both levels' code
                break
    held = [c["held"] for c in data["concurrent"]] + [False]
    data["max_streams"] = data["concurrent"][held.index(False) - 1]["streams"] if held[0] else 0
    save()
    print(f"gpu-check live: {json.dumps(data['single'])}; {data['max_streams']} concurrent streams held", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
