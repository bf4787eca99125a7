"""`wav2lip-trt serve` survives: SIGTERM drains and exits 0, a restart lists finished jobs and finishes
interrupted ones (each output written once), and a worker SIGKILLed mid-job is replaced and the job run again."""

from __future__ import annotations

import sqlite3
import time

import psutil
import pytest

from wav2lip_trt.samples import float_to_int16, speechlike_audio, write_wav

from jobs_media import frame_count, write_media
from serve_server import BOX, start_server, submit, wait_finished, wait_frames


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve_restart_media")
    found = write_media(folder)
    found["slow"] = write_wav(folder / "slow.wav", float_to_int16(speechlike_audio(1.5, seed=5)), 16000)
    return found


def statuses(state_dir) -> dict[str, str]:
    with sqlite3.connect(state_dir / "jobs.sqlite3") as db:
        return dict(db.execute("SELECT id, status FROM jobs").fetchall())


def test_restart_keeps_finished_jobs_and_finishes_interrupted_ones(media, checkpoints, tmp_path) -> None:
    first = start_server(tmp_path / "first", checkpoints, "--drain-seconds", "0", state_dir=tmp_path / "state")
    try:
        with first.client() as client:
            done = submit(client, media["face"], media["short"], box=BOX).json()
            finished = wait_finished(client, done["id"])
            assert finished["status"] == "succeeded"
            video = client.get(finished["result"]).content
            cut = submit(client, media["face"], media["slow"], box=BOX, wav2lip_batch_size=4).json()
            wait_frames(client, cut["id"], 1)
    finally:
        code = first.stop()
    assert code == 0, first.output()
    assert statuses(tmp_path / "state") == {done["id"]: "succeeded", cut["id"]: "queued"}
    job_dir = tmp_path / "state" / "jobs" / cut["id"]
    assert not (job_dir / "result.mp4").exists()
    assert [p.name for p in job_dir.iterdir() if "partial" in p.name] == []  # the cut job's temporary output is gone

    second = start_server(tmp_path / "second", checkpoints, state_dir=tmp_path / "state")
    try:
        with second.client() as client:
            listed = {job["id"]: job for job in client.get("/v1/jobs").json()["jobs"]}
            assert listed[done["id"]]["status"] == "succeeded"
            assert client.get(listed[done["id"]]["result"]).content == video
            resumed = wait_finished(client, cut["id"])
            assert resumed["status"] == "succeeded", resumed
            (tmp_path / "resumed.mp4").write_bytes(client.get(resumed["result"]).content)
            assert frame_count(tmp_path / "resumed.mp4") == resumed["report"]["frames"] > 30

            # a worker killed mid-job: replaced, and the job runs once more on the new worker
            killed = submit(client, media["face"], media["slow"], box=BOX, wav2lip_batch_size=4).json()
            wait_frames(client, killed["id"], 1)
            workers = [p for p in psutil.Process(second.process.pid).children()
                       if "--multiprocessing-fork" in p.cmdline()]
            assert len(workers) == 1
            workers[0].kill()
            end = wait_finished(client, killed["id"])
            assert end["status"] == "succeeded" and end["attempts"] == 2, end
            assert client.get("/readyz").json()["workers_ready"] == 1
    finally:
        code = second.stop()
    assert code == 0, second.output()
    assert "Traceback" not in second.output()


def test_one_client_at_a_time_and_finished_jobs_expire(media, checkpoints, tmp_path) -> None:
    server = start_server(tmp_path, checkpoints, "--max-jobs-per-client", "1", "--keep-hours", "0.001")  # 3.6 s
    try:
        with server.client() as client:
            first = submit(client, media["face"], media["slow"], box=BOX, wav2lip_batch_size=4).json()
            second = submit(client, media["face"], media["short"], box=BOX)
            assert second.status_code == 429 and int(second.headers["retry-after"]) >= 1
            assert second.json()["error"].startswith("you have 1 jobs queued or running, the most this server takes "
                                                     "from one client (--max-jobs-per-client 1)")
            client.delete(f"/v1/jobs/{first['id']}")
            assert wait_finished(client, first["id"])["status"] == "cancelled"

            job = submit(client, media["face"], media["short"], box=BOX).json()
            end = wait_finished(client, job["id"])
            assert end["status"] == "succeeded" and client.get(end["result"]).status_code == 200
            deadline = time.monotonic() + 60
            while client.get(f"/v1/jobs/{job['id']}").status_code != 404 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
            assert time.time() - end["finished"] >= 3.6
            assert not (server.state_dir / "jobs" / job["id"]).exists()
    finally:
        code = server.stop()
    assert code == 0, server.output()
