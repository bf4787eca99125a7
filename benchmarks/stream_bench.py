"""Live streaming against offline ``infer`` with the same avatar, in one process, side by side.

Random-weight checkpoints in the released format; a generated talking-face clip; one session (the
networks loaded once) serves both. Two measurements:

* **unpaced**: the whole audio fed as fast as possible, frames encoded to H.264 with the audio (as
  ``wav2lip-trt stream`` does), against ``session.infer`` on the same face, box and audio; runs
  alternate, ``--repeats`` each, the ratio is the median of per-repeat stream fps / infer fps
  (goal: at least 0.90);
* **paced**: the audio fed at real time in 200 ms chunks to an image avatar whose frame rate this
  machine sustains (``--paced-share`` of the measured offline fps); per-chunk latency (chunk fed →
  its last frame out) p50/p95/max, against the goal 250 ms + one generator batch's time.

    python benchmarks/stream_bench.py [--seconds 4] [--size 256x256] [--repeats 3] [--device cpu]

Writes ``benchmarks/results/stream_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wav2lip_trt.audio import load_audio  # noqa: E402
from wav2lip_trt.live.sinks import FileSink  # noqa: E402
from wav2lip_trt.live.sources import file_chunks  # noqa: E402
from wav2lip_trt.measure import machine_info  # noqa: E402
from wav2lip_trt.random_weights import write_random_checkpoints  # noqa: E402
from wav2lip_trt.samples import write_talking_clip  # noqa: E402
from wav2lip_trt.session import Session  # noqa: E402
from wav2lip_trt.ffmpeg import find_ffmpeg  # noqa: E402

GOAL_RATIO = 0.90
GOAL_LATENCY_S = 0.25  # plus one generator batch's time


def stream_once(session: Session, avatar, audio: Path, out: Path, *, realtime: bool, chunk: float, **options) -> dict:
    ffmpeg = find_ffmpeg(None)
    wav = load_audio(audio)
    sink = FileSink(out, width=avatar.width, height=avatar.height, fps=avatar.fps, audio=audio, record=False,
                    ffmpeg=ffmpeg, encoder="libx264", crf=18, preset="medium")
    with sink, session.stream(avatar, **options) as live:
        def produce() -> None:
            for piece in file_chunks(wav, chunk, realtime=realtime):
                live.feed(piece)
            live.close()

        feeder = threading.Thread(target=produce, daemon=True)
        start = time.perf_counter()
        feeder.start()
        for frame in live:
            sink.write(frame.image)
        feeder.join()
    seconds = time.perf_counter() - start
    report = live.stats.report()
    report["wall_seconds"] = round(seconds, 3)
    report["fps_including_encode"] = round(report["frames"] / seconds, 3)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--size", default="256x256", help="HxW of the generated clip")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--paced-share", type=float, default=0.6, help="paced avatar fps = this x offline fps")
    parser.add_argument("--paced-seconds", type=float, default=10.0, help="length of the paced run's audio")
    parser.add_argument("--out", type=Path)
    opts = parser.parse_args()
    height, width = (int(v) for v in opts.size.split("x"))
    out_path = opts.out or ROOT / "benchmarks" / "results" / f"stream_{opts.device}.json"
    box = (height // 8, height - height // 8, width // 6, width - width // 6)
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp:
        work = Path(tmp)
        checkpoint, _ = write_random_checkpoints(work / "ckpt", seed=0)
        face, audio = write_talking_clip(work / "clip", seconds=opts.seconds, fps=25.0, width=width, height=height)
        with Session(checkpoint, None, device=opts.device, backend=opts.backend) as session:
            avatar = session.avatar(face, box=box)
            session.infer(face, audio, work / "warm.mp4", box=box)  # first-call costs out of the comparison
            rows = []
            for repeat in range(opts.repeats):
                t = time.perf_counter()
                result = session.infer(face, audio, work / "infer.mp4", box=box)
                infer_s = time.perf_counter() - t
                live = stream_once(session, avatar, audio, work / "stream.mp4", realtime=False, chunk=0.2)
                row = {"repeat": repeat, "frames": result.frames, "infer_seconds": round(infer_s, 3),
                       "infer_fps": round(result.frames / infer_s, 3), "stream_seconds": live["wall_seconds"],
                       "stream_fps": live["fps_including_encode"], "stream_batches": live["batches"],
                       "infer_stages": {r["stage"]: r["seconds"] for r in result.stages}}
                row["ratio"] = round(row["stream_fps"] / row["infer_fps"], 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
            ratio = statistics.median(r["ratio"] for r in rows)
            offline_fps = statistics.median(r["infer_fps"] for r in rows)
            paced_fps = max(0.2, round(opts.paced_share * offline_fps, 2))
            image = work / "face.png"
            import cv2

            cv2.imwrite(str(image), avatar.frame(0))
            still = session.avatar(image, box=box, fps=paced_fps)
            batch_t = 1.0 / offline_fps * 2  # a two-frame batch at the offline rate, the paced stream's usual
            _, long_audio = write_talking_clip(work / "long", seconds=opts.paced_seconds, fps=25.0, width=64, height=64)
            paced = stream_once(session, still, long_audio, work / "paced.mp4", realtime=True, chunk=0.2)
    result = {
        "machine": machine_info(), "device": opts.device, "backend": opts.backend, "clip": {
            "seconds": opts.seconds, "size": opts.size, "box": list(box)},
        "unpaced": {"rows": rows, "median_ratio": ratio, "goal": GOAL_RATIO, "met": ratio >= GOAL_RATIO},
        "paced": {"avatar_fps": paced_fps, "chunk_ms": 200, "audio_seconds": opts.paced_seconds, "report": paced,
                  "goal_ms": round((GOAL_LATENCY_S + batch_t) * 1000, 1),
                  "met": paced["latency_ms"]["p95"] is not None
                  and paced["latency_ms"]["p95"] <= (GOAL_LATENCY_S + batch_t) * 1000},
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"unpaced: stream/infer fps median ratio {ratio:.3f} (goal {GOAL_RATIO}); paced at {paced_fps} fps: "
          f"p95 {paced['latency_ms']['p95']} ms (goal {result['paced']['goal_ms']} ms); wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
