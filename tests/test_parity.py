"""``parity``: the report's maths on known differences, the pass/fail and which-rung-broke logic,
one real ladder (torch vs ONNX Runtime, per model and end to end), and the command's exit codes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import wav2lip_trt.build_engines as build_engines_package
from wav2lip_trt.cli import main
from wav2lip_trt.errors import EngineError, InputError
from wav2lip_trt.parity import (
    DEFAULT_TOLERANCES, RUNGS, Check, ParityOptions, ParityReport, RungResult, box_iou, compare_boxes, compare_tensors,
    parse_tolerance, run_parity, s3fd_feed, tolerances_with, wav2lip_feed,
)

RUNG = {r.name: r for r in RUNGS}
TINY = dict(s3fd_batch=2, s3fd_size=(64, 96), wav2lip_batch=3, clip_frames=3, clip_seconds=0.6, clip_size=(96, 128))


def dyadic(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Values exact in float32, so offsets and scalings of them are exact too."""
    return (np.random.default_rng(seed).integers(1, 200, shape) / 8.0).astype(np.float32)


# ---- the maths -------------------------------------------------------------------------------


def test_constant_offset_gives_exact_absolute_errors_and_required_atol() -> None:
    ref = dyadic((2, 3, 4, 5))
    out = ref + np.float32(0.25)
    t = compare_tensors("x", ref, out, atol=0.25, rtol=0.0)
    assert t.max_abs == t.mean_abs == t.median_abs == t.p99_abs == 0.25
    assert t.elements == ref.size and t.shape == ref.shape
    assert t.required_atol == 0.25 and t.passed
    assert not compare_tensors("x", ref, out, atol=0.24, rtol=0.0).passed
    np.testing.assert_allclose(t.max_rel, (0.25 / ref).max())


def test_scaling_gives_exact_relative_errors_and_required_rtol() -> None:
    ref = dyadic((64,)) * np.where(np.arange(64) % 2, 1, -1).astype(np.float32)
    out = ref * np.float32(1.5)
    t = compare_tensors("x", ref, out, atol=0.0, rtol=0.5)
    assert t.max_rel == t.mean_rel == t.median_rel == t.p99_rel == 0.5
    assert t.required_rtol == 0.5 and t.passed
    assert t.max_abs == float(np.abs(ref).max()) * 0.5
    failing = compare_tensors("x", ref, out, atol=0.0, rtol=0.49)
    assert not failing.passed and failing.required_atol == t.max_abs


def test_an_element_passes_on_atol_or_rtol() -> None:
    ref = np.array([0.0, 100.0], dtype=np.float32)
    out = np.array([0.01, 100.5], dtype=np.float32)  # abs 0.01 (rel inf), abs 0.5 (rel 0.005)
    t = compare_tensors("x", ref, out, atol=0.01, rtol=0.005)
    assert t.passed and t.max_rel == math.inf
    assert t.required_atol == pytest.approx(0.01) and t.required_rtol == pytest.approx(0.005)
    assert not compare_tensors("x", ref, out, atol=0.009, rtol=0.005).passed
    assert not compare_tensors("x", ref, out, atol=0.01, rtol=0.004).passed


def test_nan_on_one_side_fails_nan_on_both_agrees() -> None:
    ref = np.array([1.0, np.nan, 3.0], dtype=np.float32)
    assert compare_tensors("x", ref, ref.copy(), atol=0, rtol=0).max_abs == 0
    broken = compare_tensors("x", ref, np.array([1.0, np.nan, np.nan], dtype=np.float32), atol=1e9, rtol=1e9)
    assert broken.max_abs == math.inf and not broken.passed


def test_shape_mismatch_is_a_failure_with_the_shapes() -> None:
    t = compare_tensors("pred", np.zeros((2, 3)), np.zeros((3, 3)), atol=1, rtol=1)
    assert not t.passed and "(3, 3)" in t.error and "(2, 3)" in t.error


def test_psnr_of_a_known_mse() -> None:
    ref = np.full((4, 8, 8, 3), 100, dtype=np.uint8)
    out = ref + np.uint8(2)  # MSE 4
    t = compare_tensors("frames", ref, out, atol=2, rtol=0, peak=255.0)
    assert t.psnr_db == pytest.approx(10 * math.log10(255**2 / 4))
    half = ref.copy()
    half[:2] += 2  # MSE 2
    assert compare_tensors("frames", ref, half, atol=2, rtol=0, peak=255.0).psnr_db == pytest.approx(
        10 * math.log10(255**2 / 2))
    assert compare_tensors("frames", ref, ref, atol=0, rtol=0, peak=255.0).psnr_db == math.inf
    pred = compare_tensors("pred", np.zeros(4), np.full(4, 0.1), atol=1, rtol=0, peak=1.0)
    assert pred.psnr_db == pytest.approx(20.0)


@pytest.mark.parametrize("k", [0, 1, 4, 10])
def test_a_box_shifted_by_k_pixels_has_a_known_iou(k: int) -> None:
    box = (10, 20, 50, 70)  # 40 wide, 50 high
    assert box_iou(box, (10 + k, 20, 50 + k, 70)) == pytest.approx((40 - k) / (40 + k))
    assert box_iou(box, (10, 20 + k, 50, 70 + k)) == pytest.approx((50 - k) / (50 + k))


def test_iou_of_missing_and_disjoint_boxes() -> None:
    assert box_iou(None, None) == 1.0
    assert box_iou((0, 0, 10, 10), None) == box_iou(None, (0, 0, 10, 10)) == 0.0
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_box_comparison_counts_moved_boxes_and_other_faces() -> None:
    ref = [(10, 20, 50, 70)] * 6 + [None, None]
    out = [(10, 20, 50, 70)] * 3 + [(11, 20, 51, 70), (200, 200, 240, 250), None, None, (0, 0, 5, 5)]
    b = compare_boxes("chosen face", ref, out, min_iou=0.9, max_face_changes=0.25)
    assert b.frames == 8 and b.changed == 4  # the shifted box, the other face, the lost face, the extra face
    assert b.differs == 3 and b.allowed_differs == 2
    assert b.min_iou == pytest.approx(39 / 41)
    assert not b.passed and "differs in 3 of 8 frames (allowed 2)" in b.describe_failure()
    assert compare_boxes("chosen face", ref, out, min_iou=0.9, max_face_changes=0.375).passed
    assert not compare_boxes("chosen face", ref, out, min_iou=0.96, max_face_changes=1.0).passed


def test_tolerance_overrides() -> None:
    assert parse_tolerance("fp16.atol=0.05") == ("fp16", "atol", 0.05)
    assert parse_tolerance("min-iou=0.8") == (None, "min_iou", 0.8)
    tol = tolerances_with(["fp16.atol=0.05", "min_iou=0.7"])
    assert tol["fp16"].atol == 0.05 and tol["fp32"].atol == DEFAULT_TOLERANCES["fp32"].atol
    assert tol["fp16"].min_iou == tol["fp32"].min_iou == 0.7
    for bad in ("fp16.atol", "bf16.atol=1", "fp16.speed=1", "atol=fast", "atol=-1"):
        with pytest.raises(InputError, match="--tolerance"):
            parse_tolerance(bad)


def test_seeded_inputs_are_deterministic_and_in_range() -> None:
    a, b = s3fd_feed(2, 40, 48, seed=3), s3fd_feed(2, 40, 48, seed=3)
    assert torch.equal(a["image"], b["image"]) and a["image"].shape == (2, 3, 40, 48)
    assert a["image"].min() >= -123 and a["image"].max() <= 151
    feed = wav2lip_feed(3, seed=1)
    assert feed["mel"].shape == (3, 1, 80, 16) and feed["face"].shape == (3, 6, 96, 96)
    assert feed["mel"].abs().max() <= 4 and 0 <= feed["face"].min() and feed["face"].max() <= 1
    assert feed["face"][:, :3, 48:].abs().max() == 0  # the lower half of the masked copy


# ---- pass/fail and which rung broke ------------------------------------------------------------


def _check(ok: bool) -> Check:
    ref = np.zeros(4, dtype=np.float32)
    return Check("wav2lip/random", (compare_tensors("pred", ref, ref + (0 if ok else 1), atol=1e-4, rtol=1e-4),))


def _result(name: str, status: str) -> RungResult:
    rung = RUNG[name]
    if status == "passed":
        return RungResult(rung, "passed", checks=(_check(True),))
    if status == "failed":
        check = _check(False)
        return RungResult(rung, "failed", "; ".join(check.failures()), (check,), broke=rung.breaks)
    return RungResult(rung, "skipped", "TensorRT engines run on an NVIDIA GPU, and torch sees none")


def _report(**statuses: str) -> ParityReport:
    rungs = [RungResult(RUNGS[0], "reference")]
    rungs += [_result(name.replace("_", "-"), status) for name, status in statuses.items()]
    return ParityReport(tuple(rungs), dict(DEFAULT_TOLERANCES), {})


def test_skipped_rungs_pass_and_are_counted() -> None:
    report = _report(onnxruntime_fp32="passed", tensorrt_fp32="skipped", tensorrt_fp16="skipped")
    assert report and report.passed and report.failures() == []
    assert report.summary() == "PASSED: 1 rung agrees with torch-fp32, 2 skipped"
    assert "SKIPPED" in report.table() and "NVIDIA GPU" in report.table()


def test_nothing_compared_is_not_a_pass() -> None:
    report = _report(onnxruntime_fp32="skipped")
    assert not report
    assert report.failures() == [
        "no rung was compared with the reference (onnxruntime-fp32: TensorRT engines run on an NVIDIA GPU, and torch "
        "sees none)"
    ]


def test_onnxruntime_failing_blames_the_export() -> None:
    report = _report(onnxruntime_fp32="failed", tensorrt_fp32="skipped")
    assert not report and report.summary().startswith("FAILED: 1 of 2 rungs failed")
    (line,) = report.failures()
    assert line.startswith("onnxruntime-fp32: the ONNX export broke")
    assert "wav2lip/random pred max abs error 1.00e+00 (needs atol 1.00e+00" in line


def test_tensorrt_fp32_failing_blames_the_build_once_the_export_is_cleared() -> None:
    (line,) = _report(onnxruntime_fp32="passed", tensorrt_fp32="failed").failures()
    assert line.startswith("tensorrt-fp32: the TensorRT build broke (the engine disagrees while ONNX Runtime")
    (line,) = _report(onnxruntime_fp32="skipped", tensorrt_fp32="failed").failures()
    assert line.startswith("tensorrt-fp32: the export or the TensorRT build broke (onnxruntime-fp32 did not pass")


def test_fp16_failing_blames_precision_once_fp32_is_cleared() -> None:
    (line,) = _report(onnxruntime_fp32="passed", tensorrt_fp32="passed", tensorrt_fp16="failed").failures()
    assert line.startswith("tensorrt-fp16: FP16 precision broke (the FP32 engine agrees")
    lines = _report(onnxruntime_fp32="passed", tensorrt_fp32="failed", tensorrt_fp16="failed").failures()
    assert lines[1].startswith("tensorrt-fp16: FP16 precision or the build broke (tensorrt-fp32 did not pass")
    (line,) = _report(torch_fp16="failed").failures()
    assert line.startswith("torch-fp16: FP16 precision broke (torch FP16")


def test_an_export_error_fails_its_rung_with_the_step(checkpoints, tmp_path, monkeypatch) -> None:
    def broken_export(*args, **kwargs):
        raise EngineError("onnx exporter exploded")

    monkeypatch.setattr(build_engines_package, "build_engines", broken_export)
    report = run_parity(ParityOptions(*checkpoints, inputs="random", end_to_end=False, work_dir=tmp_path,
                                      rungs=("onnxruntime-fp32",), s3fd_batch=1, s3fd_size=(32, 32), wav2lip_batch=1))
    result = report.rung("onnxruntime-fp32")
    assert result.status == "failed" and result.broke == "export"
    assert report.failures() == ["onnxruntime-fp32: the ONNX export broke: export failed: onnx exporter exploded"]


def test_options_are_validated(checkpoints, tmp_path) -> None:
    wav2lip, s3fd = checkpoints
    for kwargs, message in (
        (dict(rungs=("tensorrt-int8",)), "unknown rung 'tensorrt-int8'; choose from: torch-fp32, onnxruntime-fp32"),
        (dict(inputs="noise"), "--inputs 'noise'"),
        (dict(face=tmp_path / "face.mp4"), "give --face and --audio together"),
        (dict(s3fd_size=(16, 64)), "at least 32x32"),
        (dict(wav2lip_batch=0), "--wav2lip-batch must be at least 1"),
    ):
        with pytest.raises(InputError, match=message):
            ParityOptions(wav2lip, s3fd, **kwargs).validate()
    with pytest.raises(InputError, match="--s3fd-checkpoint file not found"):
        ParityOptions(wav2lip, tmp_path / "missing.pth").validate()


# ---- a real ladder: torch FP32 against ONNX Runtime FP32 ---------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Shared by the runs below, so ONNX is exported once (later runs find it up to date)."""
    return tmp_path_factory.mktemp("parity-work")


@pytest.fixture(scope="module")
def ladder(checkpoints, work) -> ParityReport:
    rungs = ("onnxruntime-fp32",) if torch.cuda.is_available() else ()  # the GPU rungs have their own test
    return run_parity(ParityOptions(*checkpoints, work_dir=work, rungs=rungs, **TINY))


def test_onnxruntime_matches_torch_per_model_and_end_to_end(ladder: ParityReport) -> None:
    assert ladder, ladder.failures()
    ort = ladder.rung("onnxruntime-fp32")
    assert ort.status == "passed" and ort.broke is None and ort.device == "cpu"
    names = [c.name for c in ort.checks]
    assert names == ["s3fd/random", "s3fd/clip", "wav2lip/random", "wav2lip/clip", "end-to-end"]
    s3fd = ort.checks[0]
    assert [t.name for t in s3fd.tensors] == [f"{k}{i}" for i in range(1, 7) for k in ("cls", "reg")]
    assert all(0 < t.max_abs < 1e-4 for t in s3fd.tensors) and s3fd.boxes[0].frames == 2
    pred = ort.checks[2].tensors[0]
    assert pred.shape == (3, 3, 96, 96) and pred.max_abs < 1e-5 and pred.psnr_db > 90
    e2e = ort.checks[4]
    assert [b.name for b in e2e.boxes] == ["detected face", "final box"]
    frames = next(t for t in e2e.tensors if t.name == "frames")
    assert frames.elements > 0 and frames.max_abs <= 1 and frames.atol == 1
    assert "frames compared pixel by pixel" in e2e.note


def test_rungs_that_need_a_gpu_are_skipped_with_the_reason(ladder: ParityReport) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the TensorRT rungs run")
    for name in ("tensorrt-fp32", "tensorrt-fp16", "torch-fp16"):
        result = ladder.rung(name)
        assert result.status == "skipped" and "NVIDIA GPU" in result.reason
    assert ladder.summary() == "PASSED: 1 rung agrees with torch-fp32, 3 skipped"


def test_report_json_is_strict_json(ladder: ParityReport) -> None:
    data = json.loads(json.dumps(ladder.to_json(), allow_nan=False))
    assert data["passed"] is True and data["reference"] == "torch-fp32"
    ort = next(r for r in data["rungs"] if r["name"] == "onnxruntime-fp32")
    assert ort["implicates"] == "export" and ort["status"] == "passed"
    assert {"max_abs", "mean_abs", "median_abs", "p99_abs", "max_rel", "p99_rel", "required_atol",
            "required_rtol"} <= set(ort["checks"][0]["outputs"][0])
    assert data["tolerances"]["fp32"]["atol"] == DEFAULT_TOLERANCES["fp32"].atol
    assert data["machine"]["torch"] == torch.__version__ and "onnxruntime" in data["machine"]["versions"]


def tensorrt_missing() -> str | None:
    """Why no TensorRT flavour loads here, or None when one does (then its rungs are requested, and must run)."""
    from wav2lip_trt.build_engines import load_tensorrt
    from wav2lip_trt.errors import MissingDependencyError

    try:
        load_tensorrt("auto")
    except MissingDependencyError as exc:
        return str(exc)
    return None


@pytest.mark.gpu
def test_torch_fp16_rung_matches_torch(checkpoints, work) -> None:
    """torch FP16 on CUDA within its tolerances of torch FP32: needs nothing but a GPU."""
    report = run_parity(ParityOptions(*checkpoints, work_dir=work, rungs=("torch-fp16",), **TINY))
    assert report, report.failures()
    assert [r.status for r in report.rungs[1:]] == ["passed"]


@pytest.mark.gpu
def test_tensorrt_rungs_match_torch(checkpoints, work) -> None:
    """TensorRT FP32/FP16 engines built from the same ONNX files, within their tolerances. Requested only where
    TensorRT loads: a requested rung that cannot run fails, which would blame the GPU path for a missing package."""
    missing = tensorrt_missing()
    if missing is not None:
        pytest.skip(f"no TensorRT loads: {missing}")
    report = run_parity(ParityOptions(*checkpoints, work_dir=work, rungs=("tensorrt-fp32", "tensorrt-fp16"), **TINY))
    assert report, report.failures()
    assert [r.status for r in report.rungs[1:]] == ["passed"] * 2


# ---- the command ------------------------------------------------------------------------------


def parity_cli(checkpoints, work: Path, *args: str) -> list[str]:
    wav2lip, s3fd = checkpoints
    return ["parity", "-q", "--checkpoint_path", str(wav2lip), "--s3fd-checkpoint", str(s3fd), "--work-dir", str(work),
            "--inputs", "random", "--no-end-to-end", "--s3fd-batch", "1", "--s3fd-size", "48x64",
            "--wav2lip-batch", "2", *args]


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_cli_passed_exits_0_and_writes_json(checkpoints, work, tmp_path, capsys) -> None:
    report = tmp_path / "parity.json"
    code, out, _ = run_main(parity_cli(checkpoints, work, "--rungs", "onnxruntime-fp32", "--json", str(report)), capsys)
    assert code == 0
    assert out.splitlines()[-1] == "PASSED: 1 rung agrees with torch-fp32"
    assert "onnxruntime-fp32 (onnxruntime fp32 on cpu; a failure means export): PASSED" in out
    assert json.loads(report.read_text())["passed"] is True


def test_cli_failed_exits_1_and_says_which_rung_broke(checkpoints, work, capsys) -> None:
    code, out, _ = run_main(parity_cli(checkpoints, work, "--tolerance", "atol=0", "--tolerance", "rtol=0",
                                       "--json", "-"), capsys)
    assert code == 1
    data = json.loads(out)
    assert data["passed"] is False and data["tolerances"]["fp32"]["atol"] == 0
    assert data["failures"][0].startswith("onnxruntime-fp32: the ONNX export broke")


def test_cli_requested_rung_that_cannot_run_fails(checkpoints, work, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, out, _ = run_main(parity_cli(checkpoints, work, "--rungs", "tensorrt-fp16"), capsys)
    assert code == 1
    assert "tensorrt-fp16: requested, but it cannot run here: TensorRT engines run on an NVIDIA GPU" in out
    assert out.splitlines()[-1].startswith("FAILED: 1 of 1 rungs failed")


@pytest.mark.parametrize("args, message", [
    (["--rungs", "onnxruntime-fp64"], "Error: unknown rung 'onnxruntime-fp64'; choose from:"),
    (["--tolerance", "fp16.speed=2"], "Error: --tolerance 'fp16.speed=2': write [PRECISION.]NAME=VALUE"),
    (["--s3fd-size", "big"], "Error: expected a frame size HEIGHTxWIDTH"),
])
def test_cli_bad_input_is_one_error_line(checkpoints, work, capsys, args, message) -> None:
    code, out, err = run_main(parity_cli(checkpoints, work, *args), capsys)
    assert code == 1 and out == ""
    assert err.startswith(message) and len(err.strip().splitlines()) == 1


def test_cli_reference_errors_are_user_errors(checkpoints, work, capsys) -> None:
    wav2lip, _ = checkpoints
    code, out, err = run_main(parity_cli(checkpoints, work, "--s3fd-checkpoint", str(wav2lip)), capsys)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"Error: {wav2lip}: ") and "S3FD" in err


def test_cli_missing_checkpoint_in_a_real_process(tmp_path) -> None:
    cmd = [sys.executable, "-m", "wav2lip_trt", "parity", "--checkpoint_path", str(tmp_path / "no.pth")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == f"Error: --checkpoint_path file not found: {tmp_path / 'no.pth'}"
