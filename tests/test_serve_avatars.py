"""`wav2lip-trt serve`'s avatars through the HTTP API: a real server process, a real client (httpx).

An avatar is prepared once by a worker (the live library's make_avatar), listed, and survives a
restart (an interrupted preparation is prepared again, identically); a job with `avatar` writes the
frames `wav2lip-trt stream --avatar` writes; avatars go through the upload checks, --allow-path and
the per-client limit as jobs do.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from media import decode_frames
from serve_server import BOX, serve_media, start_server, submit, wait_finished


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("avatar_media")
    return serve_media(folder, "speech", "slow")


def create_avatar(client: httpx.Client, face: Path, **options: Any) -> httpx.Response:
    with open(face, "rb") as f:
        return client.post("/v1/avatars", files={"face": (face.name, f)}, data={"options": json.dumps(options)})


def wait_avatar(client: httpx.Client, avatar_id: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = client.get(f"/v1/avatars/{avatar_id}").json()
        if view["status"] not in ("queued", "running"):
            return view
        time.sleep(0.2)
    raise AssertionError(f"avatar {avatar_id} not prepared after {timeout:g} s: {view}")


def stream_command(checkpoint: Path, avatar: Path, audio: Path, outfile: Path, *extra: str) -> None:
    done = subprocess.run([sys.executable, "-m", "wav2lip_trt", "stream", "--avatar", str(avatar), "--audio", str(audio),
                           "--outfile", str(outfile), "--checkpoint_path", str(checkpoint), "--device", "cpu", "-q",
                           *extra], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


def avatar_files(folder: Path) -> dict[str, str]:
    return {name: entry["sha256"] for name, entry in json.loads((folder / "manifest.json").read_text())["files"].items()}


def test_avatar_job_equals_stream_and_avatars_survive_a_restart(checkpoints, media, tmp_path) -> None:
    server = start_server(tmp_path / "first", checkpoints, "--allow-path", media["face"].parent)
    try:
        with server.client() as client:
            created = create_avatar(client, media["face"], box=BOX)
            assert created.status_code == 202, created.text
            avatar_id = created.json()["id"]
            assert created.headers["location"] == f"/v1/avatars/{avatar_id}"
            avatar = wait_avatar(client, avatar_id)
            assert avatar["status"] == "succeeded", avatar
            assert (avatar["frames"], avatar["width"], avatar["height"], avatar["fps"], avatar["loop"]) == \
                (15, 160, 128, 25.0, "forward")
            by_path = client.post("/v1/avatars", data={"face_path": str(media["face"]),
                                                       "options": json.dumps({"box": BOX, "loop": "pingpong"})})
            assert by_path.status_code == 202, by_path.text
            pingpong = wait_avatar(client, by_path.json()["id"])
            assert pingpong["status"] == "succeeded" and pingpong["positions"] == 30, pingpong

            with open(media["speech"], "rb") as audio:
                job = client.post("/v1/jobs", files={"audio": ("speech.wav", audio)},
                                  data={"avatar": avatar_id, "options": json.dumps({"crf": 23})})
            assert job.status_code == 202, job.text
            end = wait_finished(client, job.json()["id"])
            assert end["status"] == "succeeded", end
            assert end["files"] == {"face": f"avatar {avatar_id}", "audio": "speech.wav"}
            assert str(server.state_dir) not in json.dumps(end)
            served = tmp_path / "served.mp4"
            served.write_bytes(client.get(end["result"]).content)
            listed = client.get("/v1/avatars").json()
            assert [a["id"] for a in listed["avatars"]] == [pingpong["id"], avatar_id]  # newest first

            busy = submit(client, media["face"], media["slow"], box=BOX, wav2lip_batch_size=4).json()
            queued = create_avatar(client, media["face"], box=BOX).json()  # waits behind the job
            assert client.delete(f"/v1/avatars/{queued['id']}").json() == {"id": queued["id"], "status": "cancelled"}
            assert client.get(f"/v1/avatars/{queued['id']}").status_code == 404
            assert not (server.state_dir / "avatar-uploads" / queued["id"]).exists()
            client.delete(f"/v1/jobs/{busy['id']}")
            assert wait_finished(client, busy["id"])["status"] == "cancelled"
    finally:
        assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output()

    folder = server.state_dir / "avatars" / avatar_id
    reference = tmp_path / "stream.mp4"
    stream_command(checkpoints[0], folder, media["speech"], reference, "--crf", "23")
    ours, theirs = decode_frames(served), decode_frames(reference)
    assert ours.shape == theirs.shape and ours.shape[0] == end["report"]["frames"] > 0
    assert np.array_equal(ours, theirs)

    # an interrupted preparation (its row still running, its folder never renamed into place) is prepared
    # again, identically; a complete one whose row missed the end is found succeeded without a rerun
    prepared = avatar_files(folder)
    shutil.rmtree(folder)
    with sqlite3.connect(server.state_dir / "jobs.sqlite3") as db:
        db.execute("UPDATE avatars SET status = 'running', finished = NULL WHERE id IN (?, ?)",
                   (avatar_id, pingpong["id"]))
    restarted = start_server(tmp_path / "second", checkpoints, state_dir=server.state_dir)
    try:
        with restarted.client() as client:
            again = wait_avatar(client, avatar_id)
            assert again["status"] == "succeeded" and again["attempts"] == 1, again
            assert avatar_files(folder) == prepared
            found = client.get(f"/v1/avatars/{pingpong['id']}").json()
            assert found["status"] == "succeeded" and found["positions"] == 30, found
            assert {a["id"] for a in client.get("/v1/avatars").json()["avatars"]} == {avatar_id, pingpong["id"]}
            assert client.get(end["result"]).content == served.read_bytes()
            assert client.delete(f"/v1/avatars/{avatar_id}").json() == {"id": avatar_id, "status": "deleted"}
            assert not folder.exists() and client.get(f"/v1/avatars/{avatar_id}").status_code == 404
            assert "/v1/avatars" in client.get("/openapi.json").json()["paths"]
    finally:
        assert restarted.stop() == 0, restarted.output()


def test_avatars_are_checked_and_limited_like_jobs(checkpoints, media, tmp_path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    outside = tmp_path / "face.mp4"
    outside.write_bytes(media["face"].read_bytes())
    server = start_server(tmp_path / "server", checkpoints, "--allow-path", media["face"].parent,
                          "--max-jobs-per-client", "1")
    try:
        with server.client() as client:
            cases = [
                (create_avatar(client, text, box=BOX), 400, "notes.mp4"),
                (create_avatar(client, media["face"], box=[0, 500, 0, 500]), 400, "reaches outside the 160x128 frames "
                                                                                 "of face.mp4"),
                (create_avatar(client, media["face"], crf=23), 400, "crf is not an avatar option"),
                (create_avatar(client, media["face"], loop="sideways"), 400, "loop must be one of forward, pingpong"),
                (client.post("/v1/avatars", data={"face_path": str(outside)}), 403, "not a file under the allowed"),
                (client.post("/v1/avatars", data={"options": "{}"}), 400, "missing face"),
            ]
            for response, status, message in cases:
                assert response.status_code == status, (message, response.text)
                body = response.json()
                assert list(body) == ["error"] and message in body["error"], body
                assert str(server.state_dir) not in body["error"]
            assert client.get("/v1/avatars").json()["avatars"] == []
            assert not any((server.state_dir / "avatar-uploads").iterdir())

            avatar = wait_avatar(client, create_avatar(client, media["face"], box=BOX).json()["id"])
            assert avatar["status"] == "succeeded", avatar
            with open(media["speech"], "rb") as audio:
                both = client.post("/v1/jobs", files={"audio": ("a.wav", audio), "face": ("f.mp4", b"x")},
                                   data={"avatar": avatar["id"]})
            assert both.status_code == 400 and "not both" in both.json()["error"]
            with open(media["speech"], "rb") as audio:
                unknown = client.post("/v1/jobs", files={"audio": ("a.wav", audio)}, data={"avatar": "nope"})
            assert unknown.status_code == 404 and unknown.json()["error"] == "no avatar nope (never created, or deleted)"
            with open(media["speech"], "rb") as audio:
                face_option = client.post("/v1/jobs", files={"audio": ("a.wav", audio)},
                                          data={"avatar": avatar["id"], "options": json.dumps({"box": BOX})})
            assert face_option.status_code == 400 and "box does not apply to an avatar job" in \
                face_option.json()["error"]

            running = submit(client, media["face"], media["slow"], box=BOX, wav2lip_batch_size=4)
            assert running.status_code == 202, running.text
            refused = create_avatar(client, media["face"], box=BOX)
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            assert "--max-jobs-per-client 1" in refused.json()["error"]
            client.delete(f"/v1/jobs/{running.json()['id']}")
            assert wait_finished(client, running.json()["id"])["status"] == "cancelled"
    finally:
        assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output()
