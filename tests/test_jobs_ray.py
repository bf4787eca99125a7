"""The same jobs on a real Ray cluster started here (CPU only, two CPUs), and what happens when an actor dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from wav2lip_trt.jobs.batch import BatchOptions, run_batch
from wav2lip_trt.jobs.results import Outcome, read_results
from wav2lip_trt.jobs.worker import Task
from wav2lip_trt.options import InferenceOptions

from jobs_media import BOX, frame_count, write_jsonl, write_media

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed (make test installs it)")


@pytest.fixture(scope="module")
def cluster() -> object:
    """A local Ray instance of two CPUs and no GPU, as on a CI runner."""
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def test_the_same_jobs_on_ray_actors(cluster, checkpoints, tmp_path) -> None:
    media = write_media(tmp_path / "media")
    out = tmp_path / "out"
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"face": str(media["face"]), "audio": str(media["short"]), "outfile": str(out / "a.mp4"), "box": BOX},
        {"face": str(media["face"]), "audio": str(media["long"]), "outfile": str(out / "b.mp4"), "box": BOX,
         "nosmooth": True},
        {"face": str(media["face"]), "audio": str(tmp_path / "missing.wav"), "outfile": str(out / "c.mp4"), "box": BOX},
        {"face": str(media["face"]), "audio": str(media["long"]), "outfile": str(out / "d.mp4"), "box": BOX,
         "pads": [0, 20, 0, 0]},
    ])
    streamed: list[Outcome] = []
    options = BatchOptions(jobs_file=jobs, checkpoint_path=checkpoints[0], s3fd_checkpoint=checkpoints[1], device="cpu",
                           workers=2, ray="local")
    report = run_batch(options, on_outcome=streamed.append)
    assert not report.succeeded and report.workers == 2
    assert [o.status for o in report.outcomes] == ["ok", "ok", "failed", "ok"]
    assert "--audio file not found" in report.outcomes[2].error
    assert len({o.worker for o in report.outcomes if o.status == "ok"}) == 2  # two actors, each with a session
    assert all(o.worker.startswith("ray:") for o in report.outcomes if o.status == "ok")
    for outcome in report.outcomes:
        if outcome.status == "ok":
            assert frame_count(Path(outcome.output)) == outcome.frames > 0
    assert sorted(o.job for o in streamed) == [1, 2, 3, 4]
    assert [row["job"] for row in read_results(report.results)] == [o.job for o in streamed]  # written as they came

    again = run_batch(options)  # a local run of the same jobs sees them done, whoever made them
    assert [o.status for o in again.outcomes] == ["skipped", "skipped", "failed", "skipped"]


def test_a_job_whose_actor_died_is_retried_once_on_another(cluster, tmp_path) -> None:
    from wav2lip_trt.files import temporary_sibling, temporary_siblings
    from wav2lip_trt.jobs.ray_runner import dispatch

    class Flaky:
        """Dies running line 2 the first time and line 3 every time, each time in the middle of writing its video."""

        def ready(self) -> None:
            return None

        def run(self, task: Task) -> Outcome:
            if task.line == 3 or (task.line == 2 and task.attempt == 1):
                temporary_sibling(task.options.outfile)
                os._exit(1)
            return Outcome(task.line, "ok", task.output, worker=str(os.getpid()), attempts=task.attempt)

    actor = cluster.remote(Flaky).options(num_cpus=1)
    older = temporary_sibling(tmp_path / "out3.mp4")  # there before the batch: not the dead actor's to remove
    tasks = [Task(line, InferenceOptions(checkpoint_path=Path("w.pth"), face=Path("f.mp4"), audio=Path("a.wav"),
                                         outfile=tmp_path / f"out{line}.mp4"), f"out{line}.mp4")
             for line in (1, 2, 3, 4, 5)]
    outcomes: list[Outcome] = []
    dispatch(cluster, actor.remote, 2, tasks, outcomes.append)
    by_line = {o.job: o for o in outcomes}
    assert sorted(by_line) == [1, 2, 3, 4, 5] and len(outcomes) == 5
    assert by_line[2].status == "ok" and by_line[2].attempts == 2
    assert by_line[3].status == "failed" and by_line[3].attempts == 2 and "died twice" in by_line[3].error
    assert all(by_line[line].status == "ok" and by_line[line].attempts == 1 for line in (1, 4, 5))
    assert [temporary_siblings(task.options.outfile) for task in tasks] == [set(), set(), {older}, set(), set()]


def test_without_ray_the_option_says_what_to_install(checkpoints, tmp_path) -> None:
    fake = tmp_path / "site" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"face": "a.mp4", "audio": "a.wav", "outfile": "o.mp4"}])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "wav2lip_trt", "batch", str(jobs), "--checkpoint_path",
                           str(checkpoints[0]), "--ray"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "Error: --ray needs Ray, which is not installed: pip install 'wav2lip-trt[ray]'"]


def closed_port() -> int:
    """A port on this machine where nothing listens (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_batch(checkpoints, tmp_path: Path, address: str, timeout: float) -> tuple[list[str], Path]:
    media = write_media(tmp_path / "media")
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"face": str(media["face"]), "audio": str(media["short"]), "outfile": str(tmp_path / "out" / "a.mp4"),
         "box": BOX}])
    return [sys.executable, "-m", "wav2lip_trt", "batch", str(jobs), "--checkpoint_path", str(checkpoints[0]),
            "--device", "cpu", "--ray", address, "--ray-timeout", str(timeout)], jobs


def test_a_cluster_that_does_not_answer_is_one_error_within_the_timeout(checkpoints, tmp_path) -> None:
    import time

    address = f"127.0.0.1:{closed_port()}"
    args, jobs = ray_batch(checkpoints, tmp_path, address, 3)
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)  # Ray alone retries forever
    assert proc.returncode == 1 and time.monotonic() - started < 60
    errors = [line for line in proc.stderr.splitlines() if "Error" in line or "rror:" in line]
    assert errors == [f"Error: --ray {address}: no Ray cluster answered within 3 s (is it running, and is the address "
                      "right? --ray-timeout sets the wait)"], proc.stderr
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr and "rpc_client" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.jsonl", "media"]  # no results, no marks, no out/


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_connecting_ends_the_batch_at_once(checkpoints, tmp_path, signum) -> None:
    import time

    import psutil

    address = f"127.0.0.1:{closed_port()}"
    args, jobs = ray_batch(checkpoints, tmp_path, address, 600)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    said, deadline = b"", time.monotonic() + 120
    while b"connecting to Ray at" not in said:
        assert proc.poll() is None and time.monotonic() < deadline, said
        said += proc.stderr.read1(4096)
    time.sleep(1.0)  # inside ray.init, retrying
    children = psutil.Process(proc.pid).children(recursive=True)
    sent = time.monotonic()
    proc.send_signal(signum)
    rest = proc.communicate(timeout=30)[1]
    assert time.monotonic() - sent < 10 and proc.returncode == 128 + signum
    assert f"Interrupted ({signum.name})" in (said + rest).decode() and b"Traceback" not in said + rest
    assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.jsonl", "media"]


def test_a_gpu_actor_keeps_torchs_thread_count(checkpoints) -> None:
    """On a cluster with GPUs an actor's torch threads are torch's default, not 0 (set_num_threads(0) raises)."""
    from dataclasses import replace
    from types import SimpleNamespace

    from wav2lip_trt.jobs.ray_runner import placement
    from wav2lip_trt.jobs.worker import WorkerSpec, open_session

    gpu_cluster = SimpleNamespace(cluster_resources=lambda: {"CPU": 16.0, "GPU": 2.0},
                                  nodes=lambda: [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}}])
    where = placement(gpu_cluster, "auto", None)
    assert (where.workers, where.num_gpus, where.threads) == (2, 1, None)
    spec = WorkerSpec(checkpoints[0], None, device="cpu")
    spec = replace(spec, threads=spec.threads or where.threads)  # as run_on_ray combines them
    session = open_session(spec)
    assert session is not None
