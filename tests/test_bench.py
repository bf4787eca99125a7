"""``bench``: the timing helpers, the shared cases, option checks, and one real side-by-side run of
the original algorithm against the streaming pipeline, each in its own measured process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from wav2lip_trt.measure import library_versions
from wav2lip_trt.models.s3fd import head_map_sizes
from wav2lip_trt.bench import (
    BenchOptions, BenchReport, BenchRunError, Spread, hot_stage_cases, model_cases,
    synthetic_s3fd_outputs, time_callable, time_cases,
)
from wav2lip_trt.cli import main
from wav2lip_trt.errors import InputError


def test_spread_of_samples() -> None:
    s = Spread.of([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.min, s.max, s.n) == (2.5, 1.0, 10.0, 4)
    assert s.spread == pytest.approx(9 / 2.5)
    ms = Spread.of([0.002, 0.001, 0.003]).scaled(1e3)
    assert (ms.median, ms.min, ms.max, ms.n) == pytest.approx((2.0, 1.0, 3.0, 3))
    with pytest.raises(ValueError):
        Spread.of([])


def test_time_callable_discards_warmup_and_synchronizes() -> None:
    calls: list[str] = []

    def fn() -> None:
        calls.append("call")
        time.sleep(0.002)

    s = time_callable(fn, repeats=3, warmup=2, synchronize=lambda: calls.append("sync"))
    assert calls.count("call") == 5 and calls.count("sync") == 6 and s.n == 3
    assert 0.002 <= s.min <= s.median <= s.max


def test_hot_stage_cases_run_and_time(tmp_path) -> None:
    cases = hot_stage_cases(height=64, width=96, detect_batch=2, generate_batch=3, audio_seconds=1.0, boxes=12)
    assert [c.name for c in cases] == ["mel", "postprocess-b2-96x64", "crop-b3-96x64", "paste-b3-96x64",
                                       "smoothing-12"]
    timed = time_cases(cases, repeats=1, warmup=0)
    assert set(timed) == {c.name for c in cases}
    assert all(r["ms"]["n"] == 1 and r["items_per_second"] > 0 for r in timed.values())


def test_synthetic_s3fd_outputs_match_the_network_and_hold_a_face(checkpoints) -> None:
    import torch

    from wav2lip_trt.checkpoints import load_s3fd
    from wav2lip_trt.detect import choose_faces, preprocess

    with torch.no_grad():
        real = load_s3fd(checkpoints[1])(preprocess(torch.zeros(1, 72, 100, 3, dtype=torch.uint8).numpy()))
    assert [tuple(t.shape[2:]) for t in real[::2]] == head_map_sizes(72, 100)
    fake = synthetic_s3fd_outputs(2, 72, 100, seed=0)
    assert [tuple(t.shape) for t in fake] == [(2,) + tuple(t.shape[1:]) for t in real]
    assert all(face is not None for face in choose_faces(fake))


def test_model_cases_share_the_parity_inputs(checkpoints) -> None:
    cases = model_cases(*checkpoints, s3fd_batch=1, s3fd_size=(48, 64), wav2lip_batches=(2,))
    assert [c.name for c in cases] == ["s3fd-b1-64x48", "wav2lip-b2"]
    out = cases[1].setup()()
    assert out["pred"].shape == (2, 3, 96, 96)


def test_options_are_validated(checkpoints, tmp_path) -> None:
    wav2lip, s3fd = checkpoints
    for kwargs, message in (
        (dict(modes=("reference", "tensorflow")), "unknown mode 'tensorflow'; choose from: reference, torch"),
        (dict(modes=("torch", "torch")), "a mode is named twice"),
        (dict(repeats=0), "--repeats must be at least 1"),
        (dict(audio=tmp_path / "a.wav"), "give --face and --audio together"),
        (dict(size=(8, 8)), "at least 32x32"),
    ):
        with pytest.raises(InputError, match=message):
            BenchOptions(wav2lip, s3fd, **kwargs).validate()
    BenchOptions(wav2lip, tmp_path / "unused.pth", box=(0, 40, 0, 40)).validate()  # a fixed box needs no S3FD


def test_command_line_repeats_the_options(checkpoints) -> None:
    options = BenchOptions(*checkpoints, modes=("reference", "onnxruntime"), size=(96, 128), repeats=5, micro=True)
    command = options.command()
    wav2lip, s3fd = checkpoints
    assert command.startswith(f"wav2lip-trt bench --checkpoint_path {wav2lip} --s3fd-checkpoint {s3fd}")
    assert command.endswith("--size 96x128 --modes reference,onnxruntime --repeats 5 --micro")


def test_library_versions_are_recorded_without_imports() -> None:
    versions = library_versions()
    assert "torch" in versions and "numpy" in versions


@pytest.fixture(scope="module")
def side_by_side(checkpoints, tmp_path_factory) -> tuple[BenchReport, Path]:
    """The reference and the torch pipeline on one generated clip: one run each, no warm-up."""
    wav2lip, s3fd = checkpoints
    work = tmp_path_factory.mktemp("bench")
    report_path = work / "bench.json"
    argv = ["bench", "-q", "--checkpoint_path", str(wav2lip), "--s3fd-checkpoint", str(s3fd), "--seconds", "0.6",
            "--size", "128x160", "--repeats", "1", "--warmup", "0", "--on-missing-face", "previous",
            "--wav2lip_batch_size", "4",  # several written batches: a steady rate
            "--work-dir", str(work / "runs"), "--json", str(report_path)]
    main(argv)  # returns normally on success
    return json.loads(report_path.read_text()), work


def test_reference_and_pipeline_are_measured_side_by_side(side_by_side) -> None:
    report, _ = side_by_side
    assert list(report["modes"]) == ["reference", "torch"]
    clip = report["clip"]
    assert clip["generated"] and (clip["width"], clip["height"]) == (160, 128) and clip["frames"] > 0
    for name, mode in report["modes"].items():
        assert mode["seconds"]["n"] == 1 and mode["peak_rss_mib"]["median"] > 100
        fps = clip["frames"] / mode["seconds"]["median"]
        assert mode["frames_per_second"]["median"] == pytest.approx(fps, rel=1e-3)
        assert mode["realtime_factor"]["median"] == pytest.approx(
            clip["audio_seconds"] / mode["seconds"]["median"], rel=1e-3)
        assert mode["process_seconds"]["median"] > mode["seconds"]["median"]
        assert mode["runs"][0]["frames"] == clip["frames"]
        run = mode["runs"][0]  # the whole process's rusage: what fresh memory costs shows as faults and system time
        assert run["minor_faults"] > 0 and run["sys_seconds"] >= 0 and run["user_seconds"] > 0
        assert mode["minor_faults_per_frame"]["median"] == pytest.approx(run["minor_faults"] / run["frames"], abs=1)
        assert 0 <= mode["sys_percent"]["median"] < 100 and mode["threads"] == run["threads"] >= 1
    assert report["modes"]["reference"]["backend"] == "reference" and report["modes"]["reference"]["stages"] == []
    stages = [row["stage"] for row in report["modes"]["torch"]["stages"]]
    assert {"audio", "decode", "detect", "postprocess", "crop", "generate", "paste", "encode"} <= set(stages)
    torch_mode, torch_run = report["modes"]["torch"], report["modes"]["torch"]["runs"][0]
    assert torch_mode["steady_frames_per_second"]["median"] == torch_run["steady_fps"] > 0
    assert 0 < torch_run["first_batch_seconds"] < torch_run["seconds"]
    assert report["modes"]["reference"]["steady_frames_per_second"] is None  # the reference reports no batches
    ratio = report["speedup_over_reference"]["torch"]
    assert ratio["median_ratio"] == pytest.approx(
        report["modes"]["reference"]["seconds"]["median"] / report["modes"]["torch"]["seconds"]["median"], rel=1e-2)
    assert report["machine"]["cpu_count"] and "torch" in report["machine"]["versions"]
    assert report["command"].startswith("wav2lip-trt bench --checkpoint_path")


def test_run_outputs_are_cleaned_up(side_by_side) -> None:
    _, work = side_by_side
    assert not list((work / "runs").glob("out-*.mp4"))


def test_a_failing_run_is_one_error_line(checkpoints, tmp_path, capsys) -> None:
    wav2lip, _ = checkpoints
    argv = ["bench", "-q", "--checkpoint_path", str(wav2lip), "--s3fd-checkpoint", str(wav2lip), "--seconds", "0.3",
            "--size", "64x64", "--repeats", "1", "--warmup", "0", "--modes", "torch", "--work-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1
    assert err.startswith("Error: the torch run failed (exit code 1): Error: ") and "S3FD" in err


def test_bad_mode_is_one_error_line(checkpoints, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--checkpoint_path", str(checkpoints[0]), "--s3fd-checkpoint", str(checkpoints[1]),
              "--modes", "reference,fastest"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert err == "Error: unknown mode 'fastest'; choose from: reference, torch, onnxruntime, tensorrt, auto\n"


def test_bench_run_error_is_a_user_error() -> None:
    from wav2lip_trt.errors import Wav2LipTrtError

    assert issubclass(BenchRunError, Wav2LipTrtError)
