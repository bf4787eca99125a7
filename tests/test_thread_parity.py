"""Bit-identical CPU output holds at equal torch intra-op thread counts (issue 21): oneDNN's convolutions
sum in an order that depends on the thread count, so ``batch`` workers with infer's thread count
write infer's frames exactly, and every report says which count it ran with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from jobs_media import BOX, write_jsonl, write_media


def _frames(folder: Path) -> list[np.ndarray]:
    files = sorted(folder.glob("frame_*.png"))
    assert files, f"no frames in {folder}"
    return [cv2.imread(str(f)) for f in files]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    return write_media(tmp_path_factory.mktemp("thread_media"))


def test_batch_workers_with_infers_thread_count_write_infers_frames(media, checkpoints, tmp_path) -> None:
    infer = subprocess.run(
        [sys.executable, "-m", "wav2lip_trt", "infer", "-q", "--device", "cpu", "--checkpoint_path", str(checkpoints[0]),
         "--face", str(media["face"]), "--audio", str(media["long"]), "--outfile", str(tmp_path / "infer.mp4"),
         "--box", *map(str, BOX), "--save-frames", str(tmp_path / "infer_frames"), "--json", str(tmp_path / "infer.json")],
        capture_output=True, text=True, timeout=300)
    assert infer.returncode == 0, infer.stderr
    report = json.loads((tmp_path / "infer.json").read_text())
    threads = report["threads"]
    assert isinstance(threads, int) and threads >= 1 and report["resources"]["threads"] == threads
    assert report["resources"]["minor_faults"] > 0 and 0 <= report["resources"]["sys_share"] < 1

    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"face": str(media["face"]), "audio": str(media["long"]), "outfile": str(tmp_path / f"{name}.mp4"), "box": BOX,
         "save_frames": str(tmp_path / f"{name}_frames")}
        for name in ("a", "b")
    ])
    batch = subprocess.run(
        [sys.executable, "-m", "wav2lip_trt", "batch", str(jobs), "--checkpoint_path", str(checkpoints[0]),
         "--device", "cpu", "--workers", "2", "--threads-per-worker", str(threads), "--quiet"],
        capture_output=True, text=True, timeout=300)
    assert batch.returncode == 0, batch.stderr
    expected = _frames(tmp_path / "infer_frames")
    for name in ("a", "b"):
        got = _frames(tmp_path / f"{name}_frames")
        assert len(got) == len(expected)
        assert all(np.array_equal(g, e) for g, e in zip(got, expected)), name


def test_threads_per_worker_must_be_positive(media, checkpoints, tmp_path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"face": str(media["face"]), "audio": str(media["short"]), "outfile": str(tmp_path / "a.mp4"), "box": BOX}])
    proc = subprocess.run(
        [sys.executable, "-m", "wav2lip_trt", "batch", str(jobs), "--checkpoint_path", str(checkpoints[0]),
         "--device", "cpu", "--threads-per-worker", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "Error: --threads-per-worker must be at least 1, got 0"
    assert not (tmp_path / "a.mp4").exists()
