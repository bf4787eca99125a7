"""gpu-check (the ``gpucheck`` package) without a GPU: the verdicts on real files and real tool output, the
budget, the summary, the no-GPU exit, and the CPU rehearsal of the determinism step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # gpucheck lives beside the package, in the repository

from gpucheck import __main__ as cli  # noqa: E402
from gpucheck.logs import parse_junit, parse_sanitizer_log, parse_sync_warnings  # noqa: E402
from gpucheck.report import write_summary  # noqa: E402
from gpucheck.runner import Runner, Step, StepResult, cap_log, run_logged  # noqa: E402
from gpucheck.verdicts import (FAILED, NOT_RUN, PASSED, compare_dumps, hash_frames, headline,  # noqa: E402
                               judge_compute_sanitizer, judge_csan, judge_determinism, judge_parity, judge_pytest,
                               judge_live, judge_syncs, passed)
from wav2lip_trt.execution.gpu_timing import EventClock, SteadyRate, memory_report  # noqa: E402
from wav2lip_trt.execution.handoff import STALL_ENV, smallest, stall  # noqa: E402

GPU_CHILD_ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def child(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**GPU_CHILD_ENV, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "gpucheck", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


# ---- no GPU, the Makefile, the budget ---------------------------------------------------------------


def test_without_a_gpu_it_prints_one_line_exits_0_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = child(["--out", str(out)], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [cli.NO_GPU_LINE]
    assert proc.stderr == "" and not out.exists() and list(tmp_path.iterdir()) == []


def test_make_targets() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")

    def dry(*args: str) -> str:
        proc = subprocess.run(["make", "-n", *args], capture_output=True, text=True, cwd=REPO, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    check = dry("gpu-check", "OUT=/tmp/x")
    assert "-m gpucheck --run check --out /tmp/x" in check and "/tmp/site" in check and ".venv" not in check
    assert "-m gpucheck --run rtx" in dry("gpu-check", "GPU_RUN=rtx", "OUT=/tmp/x")
    assert "-m gpucheck --rehearse" in dry("gpu-rehearse")
    assert "-m gpucheck.staging" in dry("gpu-stage")


@pytest.mark.parametrize("run, limit_s", [("check", 9 * 60), ("rtx", 4 * 60)])
def test_the_step_caps_fit_the_budget_and_the_budget_fits_the_run(run: str, limit_s: float) -> None:
    steps = cli.plan(run, rehearsal=False, env_out={})
    assert sum(s.timeout_s for s in steps) <= cli.budget_for(run)
    assert cli.budget_for(run) <= limit_s - 30  # start-up, staging and the summary inside the run's minutes
    assert len({s.name for s in steps}) == len(steps)


# ---- the runner: every step ends PASSED, FAILED or NOT RUN -----------------------------------------------


def test_a_step_that_did_nothing_is_not_run(tmp_path: Path) -> None:
    runner = Runner(tmp_path, tmp_path, budget_s=60, echo=lambda line: None)
    nothing = runner.run(Step("empty", "Empty", lambda ctx: passed("0 frames compared", 0), 10))
    assert nothing.status == NOT_RUN and "did nothing" in nothing.summary
    silent = runner.run(Step("silent", "Silent", lambda ctx: None, 10))
    assert silent.status == NOT_RUN and "no verdict" in silent.summary
    # real evidence of nothing: two runs that saved no frames
    empty_a, empty_b = tmp_path / "a", tmp_path / "b"
    empty_a.mkdir()
    empty_b.mkdir()
    verdict = judge_determinism({"normal": hash_frames(empty_a), "blocking": hash_frames(empty_b)})
    assert verdict.status == NOT_RUN and "saved no frames" in verdict.reason


def test_out_of_time_prerequisites_crashes_and_overruns(tmp_path: Path) -> None:
    now = [1000.0]
    runner = Runner(tmp_path, tmp_path, budget_s=10, clock=lambda: now[0], grace_s=0.05, echo=lambda line: None)

    def slow(ctx):
        now[0] += 8
        return passed("did it", 1)

    assert runner.run(Step("first", "First", slow, 60, 1)).status == PASSED
    late = runner.run(Step("late", "Late", slow, 60, 5))
    assert late.status == NOT_RUN and late.summary.startswith("out of time: 2 s of the 10 s budget left")
    needs = runner.run(Step("after", "After", slow, 60, 0, needs=("late",)))
    assert needs.status == NOT_RUN and needs.summary == "needs step 'late', which not run"
    crash = Runner(tmp_path, tmp_path, budget_s=60, grace_s=0.05, echo=lambda line: None)
    broken = crash.run(Step("boom", "Boom", lambda ctx: 1 / 0, 5))
    assert broken.status == FAILED and broken.summary.startswith("ZeroDivisionError") and "Traceback" in broken.details["traceback"]
    start = time.monotonic()
    hung = crash.run(Step("hang", "Hang", lambda ctx: time.sleep(2), 0.1))
    assert hung.status == FAILED and hung.summary.startswith("timed out") and time.monotonic() - start < 1.5


def test_run_logged_kills_a_child_that_overruns_and_long_logs_keep_head_and_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    proc = run_logged([sys.executable, "-c", "print('hi', flush=True); import time; time.sleep(30)"], log, 1.0)
    assert proc.timed_out and proc.returncode is None and "killed after" in log.read_text()
    log.write_bytes(b"H" * 100 + b"M" * 1000 + b"T" * 50)
    cap_log(log, head=100, tail=50)
    assert log.read_text().startswith("H" * 100) and "M" not in log.read_text() and "cut 1000 bytes" in log.read_text()


# ---- asynchronous determinism: frames hashed from real PNG files --------------------------------------------


def write_frames(folder: Path, frames: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        assert cv2.imwrite(str(folder / f"frame_{i:06d}.png"), frame)
    return folder


def test_frames_differing_in_one_pixel_between_normal_and_serialised_runs_fail(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (5, 36, 48, 3), dtype=np.uint8)
    changed = frames.copy()
    changed[3, 10, 20, 1] ^= 1
    normal = hash_frames(write_frames(tmp_path / "normal", frames))
    same = hash_frames(write_frames(tmp_path / "stalled", frames))
    serialised = hash_frames(write_frames(tmp_path / "blocking", changed))
    ok = judge_determinism({"normal": normal, "stalled": same})
    assert ok.status == PASSED and ok.work == 5
    bad = judge_determinism({"normal": normal, "stalled": same, "blocking": serialised})
    assert bad.status == FAILED and bad.reason == "blocking vs normal: 1 frames differ (first frame_000003.png)"
    (tmp_path / "stalled" / "frame_000004.png").unlink()
    short = judge_determinism({"normal": normal, "stalled": hash_frames(tmp_path / "stalled")})
    assert short.status == FAILED and "1 frames missing" in short.reason


# ---- CSAN: real report text, the positive control -----------------------------------------------------------

CSAN_REPORT = """============================
CSAN detected a possible data race on tensor with data pointer 139800000000
Access by stream 94000001 during kernel:
aten::mul.Tensor(Tensor self, Tensor other) -> Tensor
reading from argument(s) self
With stack trace:
  File "gpucheck/child.py", line 80, in read

Previous access by stream 94000002 during kernel:
aten::add_.Tensor(Tensor(a!) self, Tensor other, *, Scalar alpha=1) -> Tensor(a!)
writing to argument(s) self, and to the output
With stack trace:
  File "gpucheck/child.py", line 72, in write

Tensor was allocated with stack trace:
  File "gpucheck/child.py", line 66, in positive_control
"""
ENABLED = "gpu-check child: CUDA sanitizer enabled\n"
FINISHED = "gpu-check child: run finished\n"


def covered(n: int) -> str:
    return f"gpu-check child: sanitizer covered {n} worker threads\n"


def test_a_sanitizer_whose_positive_control_is_not_reported_is_failed() -> None:
    clean_run = ENABLED + FINISHED + covered(3)
    blind = judge_csan(ENABLED + FINISHED + covered(2), {"csan-fp32": clean_run})
    assert blind.status == FAILED and blind.reason.startswith("blind:")
    control = ENABLED + CSAN_REPORT + "gpu-check child: control raised CUDASanitizerErrors\n" + FINISHED + covered(2)
    assert parse_sanitizer_log(control)["reports"] == 1
    ok = judge_csan(control, {"csan-fp32": clean_run, "csan-fp16": clean_run})
    assert ok.status == PASSED and ok.work == 2
    racy = judge_csan(control, {"csan-fp32": ENABLED + CSAN_REPORT + covered(3)})
    assert racy.status == FAILED and "1 CSAN report(s) in aten::mul.Tensor(Tensor" in racy.reason
    assert "did not finish" in racy.reason
    one_thread = judge_csan(control, {"csan-fp32": ENABLED + FINISHED + covered(1)})
    assert one_thread.status == FAILED and "1 worker threads covered, 2 required" in one_thread.reason
    uncovered = ENABLED + "gpu-check child: thread wav2lip-trt-writer NOT covered by the sanitizer: RuntimeError()\n"
    missed = judge_csan(control, {"csan-fp32": uncovered + FINISHED + covered(2)})
    assert missed.status == FAILED and "not covered: wav2lip-trt-writer" in missed.reason


def test_the_sanitizer_child_covers_worker_threads() -> None:
    """CSAN's dispatch mode is per thread; the child makes new threads run under one sharing the main
    thread's handler. On a CPU build CSAN sees no CUDA tensors but counts launches, given a stand-in stream."""
    code = f"""
import sys, threading, types
sys.path.insert(0, {str(REPO)!r})
import torch
from torch.cuda import _sanitizer as csan
torch.cuda.current_stream = lambda *a, **k: types.SimpleNamespace(cuda_stream=0)
from gpucheck.child import sanitize_worker_threads
handler = csan.cuda_sanitizer.dispatch.event_handler
def in_thread():
    t = threading.Thread(target=lambda: (torch.ones(3) + 1).sum())
    t.start()
    t.join()
in_thread()
unpatched = handler.seq_num
count = sanitize_worker_threads()
in_thread()
print(unpatched, handler.seq_num, count[0])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TORCH_CUDA_SANITIZER": "1"})
    assert proc.returncode == 0, proc.stderr
    unpatched, patched, count = map(int, proc.stdout.split())
    assert unpatched == 0 and patched >= 2 and count == 1


# ---- compute-sanitizer, sync debug, pytest ---------------------------------------------------------------

MEMCHECK_CLEAN = """========= COMPUTE-SANITIZER
.                                                                        [100%]
1 passed in 41.20s
========= ERROR SUMMARY: 0 errors
"""
RACECHECK_HAZARD = """========= COMPUTE-SANITIZER
========= Error: Race reported between Write access at paste_kernel+0x1a0
=========     and Read access at paste_kernel+0x2c0 [128 hazards]
.                                                                        [100%]
1 passed in 63.02s
========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)
========= ERROR SUMMARY: 1 error
"""
SKIPPED_ONLY = """========= COMPUTE-SANITIZER
s                                                                        [100%]
1 skipped in 3.10s
========= ERROR SUMMARY: 0 errors
"""


def test_compute_sanitizer_verdicts() -> None:
    assert judge_compute_sanitizer({"memcheck": MEMCHECK_CLEAN, "racecheck": MEMCHECK_CLEAN}).status == PASSED
    race = judge_compute_sanitizer({"memcheck": MEMCHECK_CLEAN, "racecheck": RACECHECK_HAZARD})
    assert race.status == FAILED and "racecheck: 1 errors (Error: Race reported between" in race.reason
    assert judge_compute_sanitizer({"memcheck": SKIPPED_ONLY}).status == NOT_RUN
    cut = judge_compute_sanitizer({"memcheck": MEMCHECK_CLEAN.rsplit("=", 1)[0]})
    assert cut.status == FAILED and "no ERROR SUMMARY" in cut.reason


def sync_log(sites: dict[str, int], mode: bool = True) -> str:
    msg = "UserWarning: called a synchronizing CUDA operation (Triggered internally at /pytorch/c10/cuda/X.cpp:1.)"
    lines = ["gpu-check child: sync debug mode 'warn'"] if mode else []
    for site, n in sites.items():
        lines += [f"{REPO}/{site}: {msg}", "  x = y.item()"] * n
    return "\n".join(lines) + "\n"


def test_syncs_are_judged_per_frame_on_two_lengths() -> None:
    load = {"wav2lip_trt/session.py:300": 40}  # load-time copies: the same on both lengths
    short = sync_log({**load, "wav2lip_trt/frame_ops.py:207": 8})
    grows = judge_syncs((short, 30), (sync_log({**load, "wav2lip_trt/frame_ops.py:207": 15,
                                                "wav2lip_trt/frame_ops.py:99": 30}), 60), repo=REPO)
    assert grows.status == FAILED and grows.reason == ("syncs grow with the clip: wav2lip_trt/frame_ops.py:99: "
                                                       "+30 syncs for 30 more frames")
    designed = judge_syncs((short, 30), (sync_log({**load, "wav2lip_trt/frame_ops.py:207": 15}), 60), repo=REPO)
    assert designed.status == PASSED and designed.details["allowed"] == {"wav2lip_trt/frame_ops.py:207": 7}
    per_frame = judge_syncs((short, 30), (sync_log({**load, "wav2lip_trt/frame_ops.py:207": 60}), 60), repo=REPO)
    assert per_frame.status == FAILED  # a designed site may sync per batch, not per frame
    assert judge_syncs((sync_log(load, mode=False), 30), (sync_log(load), 60)).status == NOT_RUN
    assert parse_sync_warnings("[W] called a synchronizing CUDA operation\n") == {
        "warnings": 1, "sites": {"(no source line)": 1}}


def run_pytest(tmp_path: Path, body: str) -> tuple[dict, int]:
    (tmp_path / "test_probe.py").write_text("import pytest\n" + body)
    xml = tmp_path / "out.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_probe.py"),
                           f"--junitxml={xml}", "-o", "junit_family=xunit2", "--rootdir", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    return parse_junit(xml), proc.returncode


def test_pytest_verdicts_from_real_junit_files(tmp_path: Path) -> None:
    skipped_only, rc = run_pytest(tmp_path, "def test_a():\n    pytest.importorskip('no_such_package_xyz')\n")
    verdict = judge_pytest(skipped_only, rc)
    assert verdict.status == NOT_RUN and "did nothing" in verdict.reason
    mixed, rc = run_pytest(tmp_path, "def test_a():\n    pytest.importorskip('no_such_package_xyz')\n\n"
                                     "def test_b():\n    assert 1 + 1 == 2\n")
    verdict = judge_pytest(mixed, rc)
    assert verdict.status == PASSED and verdict.details["not_run"][0].startswith("test_probe::test_a (could not import")
    broken, rc = run_pytest(tmp_path, "import no_such_package_xyz\n")
    assert rc == 2 and judge_pytest(broken, rc).status == FAILED  # a collection error fails the step


# ---- parity: real dumps -------------------------------------------------------------------------------------


def write_dump(folder: Path, boxes: np.ndarray, frames: np.ndarray) -> Path:
    folder.mkdir()
    np.save(folder / "det_boxes.npy", boxes)
    np.save(folder / "boxes.npy", boxes)
    np.save(folder / "frames.npy", frames)
    return folder


def test_parity_on_real_dumps(tmp_path: Path) -> None:
    """The parity ladder's tolerances: FP32 allows one level where the boxes agree, no other face; FP16 ten
    levels and another face on at most 5 % of frames."""
    boxes = np.tile(np.array([[10, 20, 50, 60]], np.int64), (100, 1))  # x1, y1, x2, y2
    frames = np.random.default_rng(1).integers(0, 240, (100, 16, 24, 3), dtype=np.uint8)
    ref = write_dump(tmp_path / "cpu", boxes, frames)
    reordered = frames.copy()
    reordered[7, 3, 3, 0] += 1  # one level: FP32 reordering can do that
    assert judge_parity("fp32", "fp32", compare_dumps(ref, write_dump(tmp_path / "ok", boxes, reordered))) == []
    corrupted = frames.copy()
    corrupted[42, 4:8, 4:8] = 255  # a face patch from the wrong batch
    bad = compare_dumps(ref, write_dump(tmp_path / "bad", boxes, corrupted))
    (problem,) = judge_parity("fp32", "fp32", bad)
    assert problem.startswith("fp32: frames with identical boxes differ by") and problem.endswith("(> 1)")
    assert judge_parity("fp16", "fp16", bad) != []  # more than FP16's ten levels too
    fp16 = frames.copy()
    fp16[:, 2, 2] += 9
    assert judge_parity("fp16", "fp16", compare_dumps(ref, write_dump(tmp_path / "fp16", boxes, fp16))) == []
    other_face = boxes.copy()
    other_face[5:9] = [200, 200, 240, 240]  # 4 % of frames chose another face
    moved = compare_dumps(ref, write_dump(tmp_path / "moved", other_face, frames))
    assert judge_parity("fp16", "fp16", moved) == []
    (problem,) = judge_parity("fp32", "fp32", moved)
    assert "the chosen face differs in 4 of 100 frames (allowed 0)" in problem
    scores = ({"similarity_mean": 0.5, "sync_loss": 1.0, "quality_mean": 0.2},
              {"similarity_mean": 0.5005, "sync_loss": 1.0, "quality_mean": 0.2})
    assert judge_parity("fp32", "fp32", compare_dumps(ref, ref), scores) == []
    assert judge_parity("fp32", "fp32", compare_dumps(ref, ref), (scores[0], {**scores[1], "sync_loss": 1.01}))


# ---- the summary ----------------------------------------------------------------------------------------


def step(name: str, status: str, summary: str = "", required: bool = True, **details) -> StepResult:
    return StepResult(name, name.title(), status, summary, required=required, details=details)


def test_the_live_step_measures_real_streams_and_judges_the_1080p_bar(checkpoints: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    """The live child's rehearsal (96x96, 0.6 s of audio, one stream then 1 and 2 concurrent ones on one
    session); its real figures judged: only the 1080p stream's fps and p95 <= 350 ms decide, no frames is NOT RUN."""
    import copy

    from gpucheck.live import main as live_main

    out = tmp_path / "live.json"
    assert live_main(["--checkpoint", str(checkpoints[0]), "--out", str(out), "--rehearsal"]) == 0
    data = json.loads(out.read_text())
    assert [c["streams"] for c in data["concurrent"]] == [1, 2]
    for run in [data["single"], *data["concurrent"]]:
        assert run["frames"] == run["expected_frames"] > 10 and run["dropped"] == 0 and run["p95_ms"] > 0
    rehearsed = judge_live(data, judged=False)
    assert rehearsed.status == PASSED and rehearsed.work == data["single"]["frames"] * 4

    fast = copy.deepcopy(data)
    fast["single"].update(held=True, p95_ms=300.0)
    assert judge_live(fast).status == PASSED
    fast["concurrent"][0]["held"], fast["max_streams"] = True, 1
    fast["concurrent"][1].update(held=False, error="RuntimeError: x")  # reported, not judged
    assert judge_live(fast).status == PASSED
    assert "1 concurrent 96x96 streams held, 2 fell behind (RuntimeError: x)" in judge_live(fast).reason
    fast["single"]["p95_ms"] = 351.0
    assert judge_live(fast).status == FAILED and "p95 latency 351.0 ms > 350 ms" in judge_live(fast).reason
    fast["single"].update(p95_ms=300.0, held=False)
    assert judge_live(fast).status == FAILED and "did not sustain 25.0 fps" in judge_live(fast).reason
    empty = {"single": {**data["single"], "frames": 0}, "concurrent": []}
    assert judge_live(empty, judged=False).status == NOT_RUN and judge_live({}).status == NOT_RUN
    assert judge_live({"error": "exited 1: boom"}).status == FAILED


def test_the_first_line_says_proven_only_when_every_required_step_passed(tmp_path: Path) -> None:
    good = [step("determinism", PASSED, "30 frames"), step("dali", NOT_RUN, "DALI is not staged", required=False),
            step("pytest-gpu", PASSED, "9 passed", not_run=["test_x (could not import 'nvidia.dali')"])]
    line = headline(good)
    assert line.startswith("PROVEN: all 2 required steps passed")
    assert "dali (DALI is not staged)" in line and "pytest-gpu: test_x (could not import 'nvidia.dali')" in line
    late = good + [step("timings", NOT_RUN, "out of time: 3 s of the 500 s budget left")]
    assert headline(late).startswith("NOT PROVEN - not run: dali") and "timings (out of time" in headline(late)
    assert headline(good + [step("csan", FAILED, "blind")]).startswith("NOT PROVEN - failed: csan")
    assert headline(good, rehearsal=True).startswith("REHEARSAL on the CPU, proves the check and not the GPU: NOT PROVEN")
    doc = write_summary(tmp_path, late, {"torch": "2.11", "rehearsal": False}, budget_s=500, seconds=12.0)
    md = (tmp_path / "summary.md").read_text()
    assert md.splitlines()[0] == doc["headline"] and doc["proven"] is False
    assert "| timings | yes | NOT RUN |" in md and "| dali | no | NOT RUN |" in md
    assert json.loads((tmp_path / "summary.json").read_text())["counts"] == {"passed": 2, "failed": 0, "not run": 2}


# ---- the hook and the GPU timing helpers ----------------------------------------------------------------


def test_the_stall_hook_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STALL_ENV, raising=False)
    assert smallest(3) == 3
    monkeypatch.setenv(STALL_ENV, "2000")
    assert smallest(3) == 1
    stall(None)  # the CPU has no stream to stall


def test_steady_rate_leaves_the_start_up_out() -> None:
    ticks = iter([0.0, 5.0, 5.1, 5.2, 5.3])  # started; then four batches of 10 frames, 5 s of start-up first
    rate = SteadyRate(clock=lambda: next(ticks))
    for _ in range(4):
        rate.batch(10)
    report = rate.report()
    assert report == {"frames": 40, "batches": 4, "first_batch_s": 5.0, "steady_fps": pytest.approx(100.0)}
    one = SteadyRate()
    one.batch(22)
    assert one.report()["steady_fps"] is None  # one batch has no steady state
    assert memory_report()["peak_rss_bytes"] > 10 * 2**20
    clock = EventClock(None)
    with clock.span("generate"):
        pass
    assert clock.seconds() == {}


@pytest.mark.gpu
def test_event_clock_and_the_stall_measure_gpu_time(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = torch.cuda.Stream()
    clock = EventClock(stream)
    monkeypatch.setenv(STALL_ENV, "20000")  # 20 ms of GPU sleep
    with clock.span("generate"):
        stall(stream)
    assert clock.seconds()["generate"] >= 0.015


@pytest.mark.gpu
def test_csan_reports_the_positive_control_on_a_gpu(tmp_path: Path) -> None:
    """The missing cross-thread wait of gpu-check's control is what CSAN must see, with both threads covered."""
    proc = subprocess.run([sys.executable, "-m", "gpucheck.child", "csan-control"], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    parsed = parse_sanitizer_log(proc.stdout + proc.stderr)
    assert parsed["reports"] >= 1 and parsed["worker_threads_covered"] == 2 and parsed["finished"], proc.stderr


# ---- the CPU rehearsal ------------------------------------------------------------------------------------


def test_rehearsal_of_the_determinism_step(tmp_path: Path) -> None:
    """The step's real flow on the CPU: three infer runs (normal, CUDA_LAUNCH_BLOCKING, the stall hook) with
    --save-frames and --score, frames hashed and compared; the GPU-only steps are NOT RUN, not passed."""
    out = tmp_path / "rehearsal"
    proc = child(["--rehearse", "--steps", "determinism,csan", "--out", str(out)], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((out / "summary.json").read_text())
    by_name = {s["name"]: s for s in data["steps"]}
    assert by_name["determinism"]["status"] == PASSED and by_name["determinism"]["work"] >= 20
    assert by_name["csan"]["status"] == NOT_RUN and by_name["timings"]["status"] == NOT_RUN
    assert data["proven"] is False and data["headline"].startswith("REHEARSAL")
    assert "gpu-check rehearsal: PASSED" in proc.stdout


# ---- staging: what the two runs upload, unpacked on the host -----------------------------------------------


def test_the_uploads_unpack_once_every_piece_has_arrived(tmp_path: Path) -> None:
    """Run 1 carries the ffmpeg archive whole and the first piece of TensorRT-RTX's; run 2 the second piece.
    Real xz archives, the real unpack.sh; the host's folders redirected into tmp_path."""
    from gpucheck.staging import write_uploads

    archives = {}
    for name, payload in (("check", b"ffmpeg" * 1000), ("rtx", os.urandom(300_000))):
        site = tmp_path / f"site-{name}" / name
        site.mkdir(parents=True)
        (site / "lib.bin").write_bytes(payload)
        archives[name] = tmp_path / f"{name}.tar.xz"
        subprocess.run(["tar", "-C", str(site.parent), "-cJf", str(archives[name]), "."], check=True)
    sizes = write_uploads(archives, tmp_path / "upload", first_piece=100_000)
    assert sizes["run1"] < archives["check"].stat().st_size + 110_000 < sizes["run1"] + sizes["run2"]
    env = {**os.environ, "GPU_SITE": str(tmp_path / "host-site"), "GPU_PACK_STORE": str(tmp_path / "host-store")}

    def unpack(run: str) -> str:
        proc = subprocess.run(["bash", str(tmp_path / "upload" / run / "unpack.sh")], capture_output=True, text=True,
                              env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    first = unpack("run1")
    assert "check.tar.xz unpacked" in first and "rtx.tar.xz has 1 of 2 pieces" in first
    assert (tmp_path / "host-site" / "check" / "lib.bin").read_bytes() == b"ffmpeg" * 1000
    assert not (tmp_path / "host-site" / "rtx").exists()
    second = unpack("run2")
    assert "rtx.tar.xz unpacked" in second and "check" not in second  # unpacked once
    assert (tmp_path / "host-site" / "rtx" / "lib.bin").read_bytes() == (tmp_path / "site-rtx" / "rtx" / "lib.bin").read_bytes()
    (tmp_path / "host-site" / ".unpacked-rtx.tar.xz").unlink()
    (tmp_path / "upload" / "run2" / "rtx.tar.xz.part2").write_bytes(b"cut short in the upload")
    proc = subprocess.run(["bash", str(tmp_path / "upload" / "run2" / "unpack.sh")], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 1 and "rtx.tar.xz is corrupt" in proc.stdout


def test_a_wheels_executables_stay_executable(tmp_path: Path) -> None:
    """imageio-ffmpeg finds its ffmpeg only if the file is executable; zipfile alone drops the bit."""
    import zipfile

    from gpucheck.staging import extract_wheel

    wheel = tmp_path / "tool-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, mode in (("tool/binaries/ffmpeg", 0o755), ("tool/__init__.py", 0o644)):
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o100000 | mode) << 16
            z.writestr(info, "#!/bin/sh\necho ok\n")
    extract_wheel(wheel, tmp_path / "site")
    assert os.access(tmp_path / "site" / "tool" / "binaries" / "ffmpeg", os.X_OK)
    assert not os.access(tmp_path / "site" / "tool" / "__init__.py", os.X_OK)

