"""Peak RSS of default-option runs at 720p and 4K (CPU, ``--box``): frames in flight bounded by bytes.

Goals (issue: frames in flight bounded by bytes): at most 1.0 GB at 720p and 2.5 GB at 4K, and flat
in the video's length (the longer run within 10 % of the shorter). Run with
``pytest benchmarks/test_frame_memory.py`` (~6 min on 2 cores); writes
``benchmarks/results/frame_memory_cpu.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from wav2lip_trt.measure import machine_info, run_measured
from wav2lip_trt.random_weights import write_random_checkpoints
from wav2lip_trt.samples import float_to_int16, speechlike_audio, talking_face_frames, write_video, write_wav

RESULTS = Path(__file__).parent / "results" / "frame_memory_cpu.json"
CASES = {
    # name: (width, height, frames of the short run, --box y1 y2 x1 x2, goal in MB)
    "720p": (1280, 720, 160, (200, 500, 500, 800), 1000),
    "4k": (3840, 2160, 140, (600, 1500, 1500, 2400), 2500),
}


def _clip(directory: Path, width: int, height: int, frames: int) -> tuple[Path, Path]:
    video = write_video(directory / f"face_{width}x{height}_{frames}.mp4", talking_face_frames(frames, width, height, seed=2), 25.0)
    audio = write_wav(directory / f"speech_{frames}.wav", float_to_int16(speechlike_audio(frames / 25)), 16000)
    return video, audio


@pytest.mark.parametrize("case", list(CASES))
def test_peak_rss_within_goal_and_flat(case: str, tmp_path: Path) -> None:
    width, height, frames, box, goal_mb = CASES[case]
    wav2lip, _ = write_random_checkpoints(tmp_path / "ck")
    runs = {}
    for count in (frames, 2 * frames):
        video, audio = _clip(tmp_path, width, height, count)
        cmd = [sys.executable, "-m", "wav2lip_trt", "infer", "-q", "--device", "cpu", "--checkpoint_path", str(wav2lip),
               "--face", str(video), "--audio", str(audio), "--outfile", str(tmp_path / f"out_{count}.mp4"),
               "--box", *map(str, box)]
        m = run_measured(cmd)
        assert m.returncode == 0, m.stderr
        runs[f"{count} frames"] = {"seconds": round(m.seconds, 2), "peak_rss_mb": round(m.peak_rss_bytes / 1e6, 1)}
    short_mb, long_mb = (r["peak_rss_mb"] for r in runs.values())
    record = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    record["machine"] = machine_info()
    record["command"] = "wav2lip-trt infer -q --device cpu --box ... (default --frame-memory 256)"
    record.setdefault("cases", {})[case] = {"size": f"{width}x{height}", "runs": runs, "goal_mb": goal_mb,
                                            "long_over_short": round(long_mb / short_mb, 3)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    assert max(short_mb, long_mb) <= goal_mb, runs
    assert long_mb / short_mb <= 1.1, runs
