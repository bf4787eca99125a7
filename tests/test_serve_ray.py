"""`wav2lip-trt serve --ray`: the same app as a Ray Serve application, on a local Ray instance the command starts.

One server for the module (the real command and a real client; two CPUs, so one to two worker
replicas of one CPU each): upload → events → a result whose frames equal `infer`'s; cancel mid-run
leaves nothing; /readyz and /metrics answer; jobs waiting bring a second replica; an avatar
prepared and one live session over the websocket; a worker killed mid-job is replaced and the job
runs once more; SIGTERM drains and exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import cv2
import httpx
import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from media import decode_frames
from serve_server import BOX, TOKEN, cancel_mid_run, events, serve_media, start_server, submit, wait_finished, wait_frames
from test_serve_avatars import create_avatar, wait_avatar
from test_serve_live import CHUNK_BYTES, connect, pcm, receive_all, refused

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (the [serve] extra brings it; make test "
                                        "installs it)")

MAX_REPLICAS = 2
THREADS = 1  # torch threads of each replica: one CPU each on this two-CPU instance


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("serve_ray_media")
    return serve_media(folder, "slow", "speech")


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoints):
    folder = tmp_path_factory.mktemp("serve_ray")
    running = start_server(folder, checkpoints, "--ray", "--max-replicas", MAX_REPLICAS, "--drain-seconds", "5",
                           workers=None)
    yield running
    assert running.stop(timeout=120) == 0, running.output()
    assert "Traceback" not in running.output(), running.output()


def test_upload_events_result_equal_to_infer(server, media, checkpoints, tmp_path) -> None:
    with server.client() as client:
        created = submit(client, media["face"], media["long"], box=BOX, crf=23)
        assert created.status_code == 202, created.text
        seen = list(events(client, created.json()["id"]))
        progress = [data for name, data in seen if name == "progress"]
        assert any(p["phase"] == "lip-syncing" for p in progress)
        end = seen[-1][1]
        assert seen[-1][0] == "end" and end["status"] == "succeeded", end
        assert end["report"]["worker"].startswith("ray-serve:") and end["report"]["outfile"] == "result.mp4"
        served = tmp_path / "served.mp4"
        served.write_bytes(client.get(end["result"]).content)

    reference = tmp_path / "infer.mp4"
    cli = subprocess.run([sys.executable, "-m", "wav2lip_trt", "infer", "--checkpoint_path", str(checkpoints[0]),
                          "--face", str(media["face"]), "--audio", str(media["long"]), "--outfile", str(reference),
                          "--box", *map(str, BOX), "--crf", "23", "--device", "cpu", "-q"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
    assert cli.returncode == 0, cli.stderr
    ours, theirs = decode_frames(served), decode_frames(reference)
    assert ours.shape == theirs.shape and ours.shape[0] == end["report"]["frames"]
    assert np.array_equal(ours, theirs)


def test_cancel_mid_run_leaves_nothing(server, media) -> None:
    with server.client() as client:
        cancel_mid_run(client, server, media)


def test_readyz_and_metrics(server) -> None:
    ready = httpx.get(f"{server.url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] and ready.json()["workers"] == MAX_REPLICAS
    assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 401  # the token guards it, as locally
    with server.client() as client:
        text = client.get("/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["wav2lip_trt_workers_ready"].samples[0].value >= 1
    assert {s.labels["status"] for s in families["wav2lip_trt_jobs"].samples} >= {"queued", "running", "succeeded"}


def test_waiting_jobs_bring_a_second_replica(server, media) -> None:
    with server.client() as client:
        jobs = [submit(client, media["face"], media["slow"], box=BOX).json()["id"] for _ in range(4)]
        most, deadline = 0, time.monotonic() + 120
        while most < MAX_REPLICAS and time.monotonic() < deadline:
            most = max(most, client.get("/readyz").json()["workers_ready"])
            time.sleep(0.5)
        assert most == MAX_REPLICAS
        answers = [client.delete(f"/v1/jobs/{job}").json() for job in jobs]  # done with them: cancelled or deleted
        assert all(answer["status"] in ("queued", "running", "cancelled", "deleted") for answer in answers), answers
        ends = [wait_finished(client, answer["id"]) for answer in answers if answer["status"] != "deleted"]
        assert all(end["status"] in ("succeeded", "cancelled") for end in ends), ends


def test_an_avatar_and_a_live_session_through_ray_serve(server, media) -> None:
    with server.client() as client:
        avatar = wait_avatar(client, create_avatar(client, media["face"], box=BOX).json()["id"])
    assert avatar["status"] == "succeeded" and avatar["frames"] == 15, avatar
    audio = pcm(media["speech"])
    with connect(server, avatar=avatar["id"]) as ws:
        ready = json.loads(ws.recv(60))
        assert ready == {"type": "ready", "avatar": avatar["id"], "fps": 25.0, "width": 160, "height": 128}
        for start in range(0, len(audio), CHUNK_BYTES):
            ws.send(audio[start : start + CHUNK_BYTES])
        ws.send(json.dumps({"type": "close"}))
        frames, end, code = receive_all(ws)
    assert end["type"] == "end" and code == 1000, end
    assert end["report"]["frames"] == len(frames) > 0 and end["report"]["avatar"] == avatar["id"]
    assert [header["index"] for header, _ in frames] == list(range(len(frames)))
    assert all(isinstance(header["latency_ms"], float) for header, _ in frames)
    image = cv2.imdecode(np.frombuffer(frames[-1][1], np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (128, 160, 3)

    free = httpx.get(f"{server.url}/readyz", timeout=10).json()["workers_ready"]
    with ExitStack() as sessions:  # every replica holds a session; clients that leave free their replicas
        for _ in range(free):
            assert json.loads(sessions.enter_context(connect(server, avatar=avatar["id"])).recv(60))["type"] == "ready"
        with connect(server, avatar=avatar["id"]) as ws:
            message, code = refused(ws)
        assert code == 1013 and message["error"].startswith("no free worker for a live session"), message


def test_a_worker_killed_mid_job_is_replaced_and_the_job_runs_again(server, media) -> None:
    with server.client() as client:
        job = submit(client, media["face"], media["slow"], box=BOX, wav2lip_batch_size=4).json()
        wait_frames(client, job["id"], 1)
        workers = [process for process in psutil.Process(server.process.pid).children(recursive=True)
                   if "wav2lip-trt-worker" in " ".join(process.cmdline())]
        assert workers
        for process in workers:  # whichever replica runs it
            process.send_signal(signal.SIGKILL)
        end = wait_finished(client, job["id"])
    assert end["status"] == "succeeded" and end["attempts"] == 2, end
    assert sorted(p.name for p in (server.state_dir / "jobs" / job["id"]).iterdir() if p.suffix == ".mp4") == [
        "result.mp4"]  # the killed worker's partial output is gone


@pytest.mark.parametrize("args, error", [
    (["--ray", "--workers", "2"], "--workers is for a local server: with --ray, --min-replicas and --max-replicas "
                                  "bound the workers"),
    (["--max-replicas", "2"], "--min-replicas and --max-replicas are for --ray (locally, --workers sets the workers)"),
    (["--ray", "--min-replicas", "3", "--max-replicas", "2"],
     "--max-replicas must be at least 1 and at least --min-replicas (3), got 2"),
])
def test_replica_options_are_checked_before_ray_starts(checkpoints, tmp_path, args, error) -> None:
    proc = subprocess.run([sys.executable, "-m", "wav2lip_trt", "serve", "--checkpoint_path", str(checkpoints[0]),
                           "--state-dir", str(tmp_path / "state"), "--token", TOKEN, *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [f"Error: {error}"]


def test_without_ray_serve_the_option_says_what_to_install(checkpoints, tmp_path) -> None:
    fake = tmp_path / "site" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "wav2lip_trt", "serve", "--checkpoint_path", str(checkpoints[0]),
                           "--state-dir", str(tmp_path / "state"), "--ray"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "Error: serve --ray needs Ray Serve, which is not installed: pip install 'wav2lip-trt[serve]'"]
