"""`wav2lip-trt batch` as a user runs it: two local workers, a bad job, a malformed file, a kill and a resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from wav2lip_trt.jobs.results import MARK_TAG, read_results

from jobs_media import BOX, frame_count, write_jsonl, write_media


def batch_args(jobs: Path, checkpoints: tuple[Path, Path], *extra: str | Path) -> list[str]:
    return [sys.executable, "-m", "wav2lip_trt", "batch", str(jobs), "--checkpoint_path", str(checkpoints[0]),
            "--s3fd-checkpoint", str(checkpoints[1]), "--device", "cpu", "--workers", "2", *map(str, extra)]


def run_batch_cli(jobs: Path, checkpoints: tuple[Path, Path], *extra: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(batch_args(jobs, checkpoints, *extra), capture_output=True, text=True, timeout=300)


def outputs(folder: Path) -> list[Path]:
    """The published videos (not the hidden temporary files and marks beside them)."""
    return [path for path in folder.glob("*.mp4") if not path.name.startswith(".")]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    return write_media(tmp_path_factory.mktemp("batch_media"))


def test_two_workers_a_bad_job_and_a_rerun(media, checkpoints, tmp_path) -> None:
    out = tmp_path / "out"
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"face": str(media["face"]), "audio": str(media["short"]), "outfile": str(out / "a.mp4"), "box": BOX},
        {"face": str(media["face"]), "audio": str(media["long"]), "outfile": str(out / "b.mp4"), "box": BOX,
         "blend": "feather", "crf": 23},
        {"face": str(tmp_path / "missing.mp4"), "audio": str(media["short"]), "outfile": str(out / "c.mp4"),
         "box": BOX},
        {"face": str(media["face"]), "audio": str(media["short"]), "outfile": str(out / "d.mp4"), "box": BOX,
         "static": True},
    ])
    first = run_batch_cli(jobs, checkpoints)
    assert first.returncode == 1, first.stderr  # one job failed: not every job succeeded
    assert f"Error: line 3 ({out / 'c.mp4'}): --face file not found: {tmp_path / 'missing.mp4'}" in first.stderr
    assert "4 jobs: 3 done, 0 already done, 1 failed" in first.stderr
    rows = {row["job"]: row for row in read_results(tmp_path / "jobs.results.jsonl")}
    assert [rows[line]["status"] for line in (1, 2, 3, 4)] == ["ok", "ok", "failed", "ok"]
    assert len({rows[line]["worker"] for line in (1, 2, 4)}) == 2  # both workers ran jobs
    for line, name in ((1, "a"), (2, "b"), (4, "d")):
        assert rows[line]["output"] == str(out / f"{name}.mp4")
        assert rows[line]["frames"] > 0 and frame_count(out / f"{name}.mp4") == rows[line]["frames"]
    assert rows[2]["frames"] > rows[1]["frames"]  # the longer audio
    assert not (out / "c.mp4").exists()
    made = {name: (out / f"{name}.mp4").stat().st_mtime_ns for name in "abd"}

    again = run_batch_cli(jobs, checkpoints, "--results", tmp_path / "again.jsonl")
    assert again.returncode == 1
    assert "4 jobs: 0 done, 3 already done, 1 failed" in again.stderr
    statuses = {row["job"]: row["status"] for row in read_results(tmp_path / "again.jsonl")}
    assert statuses == {1: "skipped", 2: "skipped", 3: "failed", 4: "skipped"}
    assert {name: (out / f"{name}.mp4").stat().st_mtime_ns for name in "abd"} == made  # nothing written again


def test_a_malformed_line_is_one_error_and_runs_nothing(media, checkpoints, tmp_path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"face": str(media["face"]), "audio": str(media["short"]), "outfile": str(tmp_path / "a.mp4"), "box": BOX},
        '{"face": "x.mp4", "audio": "x.wav", "outfile": "x.mp4", "box": [30, 110, 40, 120]',
    ])
    proc = run_batch_cli(jobs, checkpoints, "--quiet")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"Error: {jobs} line 2: not valid JSON (Expecting ',' delimiter at column 82)"]
    assert not (tmp_path / "a.mp4").exists() and not (tmp_path / "jobs.results.jsonl").exists()


def test_a_killed_batch_resumes_and_runs_each_job_once(media, checkpoints, tmp_path) -> None:
    out = tmp_path / "out"
    names = [f"job{i}" for i in range(4)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"face": str(media["face"]), "audio": str(media["short"]), "outfile": str(out / f"{name}.mp4"), "box": BOX,
         "pads": [0, i, 0, 0]} for i, name in enumerate(names)])
    proc = subprocess.Popen(batch_args(jobs, checkpoints, "--quiet"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not outputs(out):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(workers) >= 2
    psutil.wait_procs(workers, timeout=60)  # the workers follow their parent (and publish nothing half-done)
    assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers)
    before = {path.name: path.stat().st_mtime_ns for path in outputs(out)}
    assert 1 <= len(before) < len(names), before  # killed midway

    resumed = run_batch_cli(jobs, checkpoints)
    assert resumed.returncode == 0, resumed.stderr
    rows = read_results(tmp_path / "jobs.results.jsonl")
    assert sorted(row["job"] for row in rows) == list(range(1, 5))  # each job exactly one line
    skipped = {Path(row["output"]).name for row in rows if row["status"] == "skipped"}
    ran = {Path(row["output"]).name for row in rows if row["status"] == "ok"}
    assert skipped == set(before) and ran == {f"{name}.mp4" for name in names} - set(before)
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before  # finished once, never again
    expected = {row["frames"] for row in rows if row["status"] == "ok"}.pop()
    assert [frame_count(out / f"{name}.mp4") for name in names] == [expected] * len(names)
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") and not p.name.endswith(MARK_TAG)]
    assert leftovers == []  # no temporary file left by the killed workers


def test_a_job_whose_worker_died_is_retried_on_another(media, checkpoints, tmp_path) -> None:
    out = tmp_path / "out"
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"face": str(media["face"]), "audio": str(media["long"]), "outfile": str(out / f"{i}.mp4"), "box": BOX}
        for i in range(3)])
    proc = subprocess.Popen(batch_args(jobs, checkpoints), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    victim = None
    while victim is None:  # a worker in the middle of a job: its ffmpeg is writing the video's temporary file
        assert proc.poll() is None and time.monotonic() < deadline
        for worker in psutil.Process(proc.pid).children():
            try:
                if any("ffmpeg" in child.name() and any(".partial." in arg for arg in child.cmdline())
                       for child in worker.children()):
                    victim = worker
                    break
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.02)
    victim.kill()
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    assert "died (killed by SIGKILL) running line" in stderr and "retrying it on another worker" in stderr
    rows = read_results(tmp_path / "jobs.results.jsonl")
    assert sorted(row["attempts"] for row in rows) == [1, 1, 2] and {row["status"] for row in rows} == {"ok"}
    assert all(frame_count(out / f"{i}.mp4") == rows[0]["frames"] for i in range(3))
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") and not p.name.endswith(MARK_TAG)]
    assert leftovers == []  # the dead worker's temporary video was removed by the batch


def test_default_workers_split_the_cores_and_ray_addresses_are_checked() -> None:
    from wav2lip_trt.errors import InputError
    from wav2lip_trt.jobs.command import check_ray_address
    from wav2lip_trt.jobs.local import default_workers

    assert [default_workers("cpu", cores) for cores in (1, 2, 3, 8, 64)] == [1, 2, 3, 4, 4]
    for address in (None, "local", "auto", "ray://head:10001", "10.0.0.5:6379"):
        check_ray_address(address)
    with pytest.raises(InputError, match="put --ray after JOBS|write --ray after JOBS"):
        check_ray_address("jobs.jsonl")  # `batch --ray jobs.jsonl` took the jobs file for the address


def test_a_dead_workers_temporary_files_and_nothing_else_are_removed(tmp_path) -> None:
    from wav2lip_trt.files import temporary_sibling
    from wav2lip_trt.jobs.worker import Task, remove_temporaries, temporaries
    from wav2lip_trt.options import InferenceOptions

    name = "n" * 250 + ".mp4"  # a long name: the temporary name's stem is cut, and still matched
    for outfile in (tmp_path / "a.mp4", tmp_path / name):
        task = Task(1, InferenceOptions(checkpoint_path=Path("w.pth"), face=Path("f.mp4"), audio=Path("a.wav"),
                                        outfile=outfile), str(outfile))
        older = temporary_sibling(outfile)  # there before the job started: not this job's
        before = temporaries(task)
        assert before == {older}
        own = [temporary_sibling(outfile), temporary_sibling(outfile)]
        stem = outfile.stem[:200]
        alike = [tmp_path / f".{stem}.1234.partial.mp4", tmp_path / f".{stem}.0123456z.partial.mp4",
                 tmp_path / f".{stem}.01234567.partial.mkv", tmp_path / f".{stem}.01234567.tmp.mp4",
                 tmp_path / f".{stem}.mp4{MARK_TAG}", tmp_path / ".b.01234567.partial.mp4", outfile]
        for path in alike:
            path.write_bytes(b"x")
        assert sorted(remove_temporaries(task, before)) == sorted(own)
        assert older.exists() and all(path.exists() for path in alike) and not any(path.exists() for path in own)


def test_a_job_whose_outfile_is_another_jobs_face_runs_nothing(media, checkpoints, tmp_path) -> None:
    face = tmp_path / "in" / "face.mp4"
    face.parent.mkdir()
    face.write_bytes(media["face"].read_bytes())
    (tmp_path / "out" / "sub").mkdir(parents=True)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"face": str(face), "audio": str(media["short"]), "outfile": str(tmp_path / "out" / "a.mp4"), "box": BOX},
        {"face": str(media["face"]), "audio": str(media["long"]), "box": BOX,
         "outfile": str(tmp_path / "in" / ".." / "in" / "face.mp4")},
    ])
    proc = run_batch_cli(jobs, checkpoints, "--quiet")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"Error: {jobs}: line 2's outfile {tmp_path}/in/../in/face.mp4 is the same file as line 1's face {face}; "
        "inputs are never overwritten"]
    assert face.read_bytes() == media["face"].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "jobs.jsonl", "out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sub"]


@pytest.mark.parametrize("where", ["line", "option"])
def test_a_home_that_cannot_be_expanded_is_one_error(checkpoints, tmp_path, where) -> None:
    """``~no-such-user`` (``Path.expanduser``'s RuntimeError) or a HOME that is a file: one Error line, nothing run."""
    home = tmp_path / "home-file"
    home.write_bytes(b"x")
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"face": "a.mp4", "audio": "a.wav", "outfile": str(tmp_path / "a_out.mp4"), "box": BOX},
        {"face": "b.mp4", "audio": "b.wav", "outfile": "~/b_out.mp4" if where == "line" else str(tmp_path / "b.mp4"),
         "box": BOX}])
    extra = ("--cache-dir", "~no-such-user-w2l/cache") if where == "option" else ()
    proc = subprocess.run(batch_args(jobs, checkpoints, "--quiet", *extra), capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HOME": str(home)})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"Error: {jobs} line 2: outfile ~/b_out.mp4: cannot expand ~: HOME is '{home}', not a folder"
        if where == "line" else
        "Error: --cache-dir ~no-such-user-w2l/cache: cannot expand ~no-such-user-w2l: no user 'no-such-user-w2l' on "
        "this machine"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home-file", "jobs.jsonl"]
