"""Peak memory must not grow with the video's length: a 4x longer input stays within 20 %.

Run with ``make bench`` (or ``pytest benchmarks/test_streaming_memory.py``); writes
``benchmarks/results/streaming_memory_cpu.json``. The original keeps every decoded frame in a list,
so its peak grows linearly; the streaming pipeline holds one detection batch, the smoothing
look-ahead and one generator batch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from wav2lip_trt.measure import machine_info, run_measured
from wav2lip_trt.random_weights import write_random_checkpoints
from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav

RESULTS = Path(__file__).parent / "results" / "streaming_memory_cpu.json"
CASES = {
    # name: (width, height, short seconds, extra CLI args)
    "fixed-box-640x360": (640, 360, 6.0, ["--box", "60", "300", "200", "440"]),
    # The short run must fill whole generator batches too, or it measures a smaller batch, not length.
    "s3fd-160x128": (160, 128, 3.0, ["--wav2lip_batch_size", "32"]),
}


def _clip(directory: Path, width: int, height: int, seconds: float) -> tuple[Path, Path]:
    frames = talking_face_frames(int(seconds * 25), width, height, seed=2)
    video = write_video(directory / f"face_{seconds:g}s.mp4", frames, 25.0)
    audio = write_wav(directory / f"speech_{seconds:g}s.wav", float_to_int16(speechlike_audio(seconds)), 16000)
    return video, audio


@pytest.mark.parametrize("case", list(CASES))
def test_peak_rss_flat_over_length(case: str, tmp_path: Path) -> None:
    width, height, short, extra = CASES[case]
    wav2lip, s3fd = write_random_checkpoints(tmp_path / "ck")
    runs = {}
    for seconds in (short, 4 * short):
        video, audio = _clip(tmp_path, width, height, seconds)
        cmd = [sys.executable, "-m", "wav2lip_trt", "infer", "-q", "--checkpoint_path", str(wav2lip),
               "--s3fd-checkpoint", str(s3fd), "--face", str(video), "--audio", str(audio),
               "--outfile", str(tmp_path / f"out_{seconds:g}.mp4"), "--on-missing-face", "previous", *extra]
        m = run_measured(cmd)
        assert m.returncode == 0, m.stderr
        runs[f"{seconds:g}s"] = {"seconds": round(m.seconds, 2), "peak_rss_mib": round(m.peak_rss_bytes / 2**20, 1),
                                 "frames": int(seconds * 25)}
    short_rss, long_rss = (r["peak_rss_mib"] for r in runs.values())
    ratio = long_rss / short_rss
    record = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    record["machine"] = machine_info()
    record.setdefault("cases", {})[case] = {"size": f"{width}x{height}", "runs": runs, "long_over_short": round(ratio, 3)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    assert ratio <= 1.2, runs
