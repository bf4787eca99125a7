"""`wav2lip-trt serve`'s limits: request timeouts (slowloris), job timeouts, the disk quota, its free-space floor.

Real servers (uvicorn on a free port) with the limits set small, a real client (httpx) or a raw socket
for the clients that trickle; the quota's eviction rule on real files and a real job table.
"""

from __future__ import annotations

import json
import select
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wav2lip_trt.errors import InputError
from wav2lip_trt.files import temporary_siblings
from wav2lip_trt.samples import float_to_int16, speechlike_audio, write_wav
from wav2lip_trt.serve.config import ServeConfig
from wav2lip_trt.serve.quota import DiskQuota, StorageFull, folder_bytes
from wav2lip_trt.serve.store import JobStore

from jobs_media import write_media
from serve_server import BOX, TOKEN, events, start_server, submit, wait_finished

REQUEST_TIMEOUT = 1.0
JOB_TIMEOUT = 1.5
QUOTA_BYTES = 500_000


def audio(folder: Path, name: str, seconds: float) -> Path:
    return write_wav(folder / name, float_to_int16(speechlike_audio(seconds, seed=7)), 16000)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("serve_safety_media")
    found = write_media(folder)
    found["long"] = audio(folder, "ten.wav", 10.0)  # 250 frames: seconds of work on this CPU
    return found


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, checkpoints):
    folder = tmp_path_factory.mktemp("serve_guarded")
    running = start_server(folder, checkpoints, "--request-timeout", REQUEST_TIMEOUT, "--job-timeout", JOB_TIMEOUT)
    yield running
    assert running.stop() == 0, running.output()
    assert "Traceback" not in running.output()


def trickle(url: str, head: bytes, piece: bytes, every: float = 0.2, at_most: float = 20.0) -> tuple[bytes, float]:
    """Send ``head``, then ``piece`` every ``every`` s until the server answers; (all it sent to EOF, seconds)."""
    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=10.0) as sock:
        sock.sendall(head)
        start = time.monotonic()
        while time.monotonic() - start < at_most and not select.select([sock], [], [], every)[0]:
            sock.sendall(piece)
        answer = b""
        while chunk := sock.recv(65536):  # to EOF: the server closed the connection
            answer += chunk
        return answer, time.monotonic() - start


def parse(answer: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_a_body_that_trickles_is_cut_off_with_408(guarded) -> None:
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
            '--b\r\nContent-Disposition: form-data; name="face"; filename="f.mp4"\r\n\r\n').encode() + b"\0" * 1000
    answer, seconds = trickle(guarded.url, head, b"\0")
    status, headers, body = parse(answer)
    assert status == 408 and headers["connection"] == "close"
    assert body == {"error": "the request did not arrive in full within 1 s (--request-timeout); the connection is "
                             "closed"}
    assert REQUEST_TIMEOUT - 0.1 < seconds < REQUEST_TIMEOUT + 3


def test_headers_that_trickle_are_cut_off_with_408(guarded) -> None:
    answer, seconds = trickle(guarded.url, b"GET /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: a\r\n")
    status, headers, body = parse(answer)
    assert status == 408 and headers["connection"] == "close" and "--request-timeout" in body["error"]
    assert REQUEST_TIMEOUT - 0.1 < seconds < REQUEST_TIMEOUT + 3
    with guarded.client() as client:  # a request that arrives in time is answered, and the server is fine
        assert client.get("/v1/jobs").status_code == 200


def test_a_job_past_the_job_timeout_fails_and_leaves_no_partial_output(guarded, media) -> None:
    with guarded.client() as client:
        job = submit(client, media["face"], media["long"], box=BOX, wav2lip_batch_size=1).json()
        opened = time.monotonic()
        seen = list(events(client, job["id"]))  # an event stream outlives --request-timeout: it is not timed
        streamed = time.monotonic() - opened
    name, end = seen[-1]
    assert name == "end" and end["status"] == "failed", end
    assert end["error"] == (f"the job exceeded --job-timeout {JOB_TIMEOUT:g} s (the server's limit on one job's "
                            "running time); its partial output was removed")
    assert JOB_TIMEOUT < end["finished"] - end["started"] < JOB_TIMEOUT + 5
    assert streamed > REQUEST_TIMEOUT
    outfile = guarded.state_dir / "jobs" / job["id"] / "result.mp4"
    assert not outfile.exists() and not temporary_siblings(outfile)


def test_a_websocket_outlives_the_request_timeout(guarded, media) -> None:
    """The deadline on a request's headers ends when the connection becomes a websocket: an idle session stays."""
    from test_serve_avatars import create_avatar, wait_avatar
    from test_serve_live import CHUNK_BYTES, connect, pcm, receive_all

    with guarded.client() as client:
        avatar = wait_avatar(client, create_avatar(client, media["face"], box=BOX).json()["id"])
    assert avatar["status"] == "succeeded", avatar
    with connect(guarded, avatar=avatar["id"]) as ws:
        assert json.loads(ws.recv(30))["type"] == "ready"
        time.sleep(REQUEST_TIMEOUT * 2.5)
        audio = pcm(media["short"])
        for start in range(0, len(audio), CHUNK_BYTES):
            ws.send(audio[start : start + CHUNK_BYTES])
        ws.send(json.dumps({"type": "close"}))
        frames, end, code = receive_all(ws)
    assert end["type"] == "end" and code == 1000 and end["report"]["frames"] == len(frames) > 0, end


def metric(client, name: str) -> float:
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    return families[name].samples[0].value


def test_the_disk_quota(media, checkpoints, tmp_path) -> None:
    """Usage tracked, a growing output stopped at the quota, new work refused with 507 until a deletion frees room."""
    server = start_server(tmp_path, checkpoints, "--max-disk-gb", QUOTA_BYTES / 1e9)
    jobs = server.state_dir / "jobs"
    try:
        with server.client() as client:
            assert metric(client, "wav2lip_trt_disk_quota_bytes") == QUOTA_BYTES
            first = submit(client, media["face"], media["short"], box=BOX).json()
            assert wait_finished(client, first["id"])["status"] == "succeeded"
            assert metric(client, "wav2lip_trt_disk_used_bytes") == folder_bytes(jobs) > 0

            # its uploads fit; its output (lossless, ~3 KB a frame) does not: stopped mid-run, nothing partial left
            big = submit(client, media["face"], media["long"], box=BOX, crf=0).json()
            end = wait_finished(client, big["id"])
            assert end["status"] == "failed" and end["error"] == (
                "the job's output would take the server past its disk quota (--max-disk-gb); its partial output "
                "was removed"), end
            outfile = jobs / big["id"] / "result.mp4"
            assert not outfile.exists() and not temporary_siblings(outfile)
            used = metric(client, "wav2lip_trt_disk_used_bytes")
            assert used == folder_bytes(jobs) <= QUOTA_BYTES

            # more than is left, with every finished job inside the grace: 507, one line, nothing stored
            extra = audio(tmp_path, "extra.wav", (QUOTA_BYTES - used) / 32000 + 0.5)
            refused = submit(client, media["face"], extra, box=BOX)
            assert refused.status_code == 507, refused.text
            assert list(refused.json()) == ["error"] and refused.json()["error"].startswith(
                "the server's storage is full: ") and "(--max-disk-gb)" in refused.json()["error"]
            assert sorted(p.name for p in jobs.iterdir()) == sorted([first["id"], big["id"]])

            # larger than the whole quota: 413, refused by its Content-Length
            huge = audio(tmp_path, "huge.wav", QUOTA_BYTES / 32000 + 1)
            too_big = submit(client, media["face"], huge, box=BOX)
            assert too_big.status_code == 413 and "larger than the server's whole disk quota (0.5 MB, " \
                "--max-disk-gb)" in too_big.json()["error"]

            # a client deletes a finished job: its share is freed at once and the same upload is taken
            assert client.delete(f"/v1/jobs/{big['id']}").json()["status"] == "deleted"
            assert metric(client, "wav2lip_trt_disk_used_bytes") == folder_bytes(jobs)
            taken = submit(client, media["face"], extra, box=BOX)
            assert taken.status_code == 202, taken.text
            client.delete(f"/v1/jobs/{taken.json()['id']}")
            assert wait_finished(client, taken.json()["id"])["status"] in ("cancelled", "succeeded", "failed")
    finally:
        assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output()


def job_folder(root: Path, job_id: str, size: int) -> None:
    (root / job_id).mkdir(parents=True)
    (root / job_id / "result.mp4").write_bytes(b"\0" * size)


def test_quota_makes_room_from_the_oldest_finished_jobs_past_the_grace(tmp_path) -> None:
    root = tmp_path / "jobs"
    store = JobStore(tmp_path / "jobs.sqlite3")
    now = time.time()
    for job_id, finished in (("young", now - 10), ("old", now - 500), ("older", now - 900), ("running", None)):
        store.add(job_id, "f", "a", "o", {}, {})
        store.update(job_id, status="running" if finished is None else "succeeded", finished=finished)
        job_folder(root, job_id, 1000)
    deleted = []

    def delete(job_id: str) -> None:
        deleted.append(job_id)
        (root / job_id / "result.mp4").unlink()
        (root / job_id).rmdir()
        store.delete(job_id)

    quota = DiskQuota(root, 4500, grace_seconds=60, finished_before=store.finished_before, delete=delete, floor=0)
    quota.scan()
    assert quota.used == 4000
    quota.admit(500)  # fits: nothing deleted
    assert deleted == []
    with quota.reserve(1400):  # needs 900 more: the oldest past the grace goes, and only it
        assert deleted == ["older"] and quota.used == 3000
        with pytest.raises(StorageFull) as full:
            quota.admit(1400)  # 3000 + 1400 reserved + 1400: "old" goes, and it is not enough ("young" is in grace)
    assert full.value.status == 507 and deleted == ["older", "old"]
    assert quota.used == 2000 == folder_bytes(root)
    with pytest.raises(StorageFull) as alone:
        quota.admit(4501)
    assert alone.value.status == 413
    job_folder(root, "new", 700)
    assert quota.account("new") == 700 and quota.used == 2700
    quota.forget("young")
    assert quota.used == 1700
    store.close()


def test_new_work_is_refused_below_the_free_space_floor(tmp_path) -> None:
    import shutil

    free = shutil.disk_usage(tmp_path).free
    quota = DiskQuota(tmp_path, 0, grace_seconds=0, finished_before=lambda when: [], delete=lambda job_id: None,
                      floor=free + 10**12)
    with pytest.raises(StorageFull) as low:
        quota.admit(0)
    assert low.value.status == 507 and str(low.value).startswith("the server's disk is nearly full (")
    DiskQuota(tmp_path, 0, grace_seconds=0, finished_before=lambda when: [], delete=lambda job_id: None,
              floor=0).admit(0)


@pytest.mark.parametrize("option, value, message", [
    ("request_timeout", 0, "--request-timeout must be positive, got 0"),
    ("job_timeout", -1, "--job-timeout must be 0 (no limit) or more, got -1"),
    ("max_disk_gb", -1, "--max-disk-gb must be 0 (no limit) or more, got -1"),
    ("quota_grace_minutes", -1, "--quota-grace-minutes must be 0 or more, got -1"),
])
def test_limits_are_checked_at_start(checkpoints, tmp_path, option, value, message) -> None:
    config = ServeConfig(checkpoint_path=checkpoints[0], device="cpu", state_dir=tmp_path, **{option: value})
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config.validate()


@pytest.mark.parametrize("given", ["~/face.mp4", "~nosuchuser/face.mp4", "face\x00.mp4"])
def test_a_client_path_is_taken_literally_and_refused_outside_the_roots(tmp_path, monkeypatch, given) -> None:
    """A ``~`` is not the server user's home (no expansion, no RuntimeError); a NUL is no ValueError."""
    from wav2lip_trt.serve.uploads import UploadError, resolve_allowed

    home = tmp_path / "home"
    home.mkdir()
    (home / "face.mp4").write_bytes(b"x")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UploadError) as caught:
        resolve_allowed("face_path", given, (home.resolve(),))
    assert caught.value.status == 403
    assert "not a file under the allowed folders" in str(caught.value)


def test_avatars_count_against_the_disk_quota(media, checkpoints, tmp_path) -> None:
    """A prepared avatar's folder and kept upload are in the quota's usage (after a restart too); a delete frees them."""
    server = start_server(tmp_path, checkpoints, "--max-disk-gb", 1)
    state = server.state_dir

    def on_disk() -> int:
        return sum(folder_bytes(state / name) for name in ("jobs", "avatars", "avatar-uploads"))

    try:
        with server.client() as client:
            with open(media["face"], "rb") as face:
                made = client.post("/v1/avatars", files={"face": ("face.mp4", face)},
                                   data={"options": json.dumps({"box": BOX})})
            assert made.status_code == 202, made.text
            avatar = made.json()["id"]
            deadline = time.monotonic() + 120
            while client.get(f"/v1/avatars/{avatar}").json()["status"] in ("queued", "running"):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert client.get(f"/v1/avatars/{avatar}").json()["status"] == "succeeded"
            used = metric(client, "wav2lip_trt_disk_used_bytes")
            assert used == on_disk() > folder_bytes(state / "avatar-uploads") > 0
    finally:
        assert server.stop() == 0, server.output()
    again = start_server(tmp_path, checkpoints, "--max-disk-gb", 1)
    try:
        with again.client() as client:
            assert metric(client, "wav2lip_trt_disk_used_bytes") == used
            assert client.delete(f"/v1/avatars/{avatar}").json()["status"] == "deleted"
            assert metric(client, "wav2lip_trt_disk_used_bytes") == on_disk() == 0
    finally:
        assert again.stop() == 0, again.output()
    assert "Traceback" not in server.output() + again.output()
