"""`wav2lip-trt serve` through its HTTP API: a real server process, a real client (httpx).

One server for the module (one worker, a queue of one, a token, a small upload limit): upload →
events → a result whose frames equal `infer`'s; range requests; cancel mid-run leaves nothing; a
full queue answers 429; bad requests answer 4xx with one message; /metrics parses.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from media import decode_frames
from serve_server import BOX, cancel_mid_run, events, serve_media, start_server, submit, wait_finished

UPLOAD_LIMIT_MB = 1


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("serve_media")
    return serve_media(folder, "slow")


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoints, media):
    folder = tmp_path_factory.mktemp("serve_api")
    running = start_server(folder, checkpoints, "--queue-size", "1", "--max-upload-mb", UPLOAD_LIMIT_MB,
                           "--allow-path", media["face"].parent)
    yield running
    assert running.stop() == 0, running.output()
    assert "Traceback" not in running.output()


def test_upload_events_result_equal_to_infer(server, media, checkpoints, tmp_path) -> None:
    with server.client() as client:
        created = submit(client, media["face"], media["long"], box=BOX, crf=23)
        assert created.status_code == 202, created.text
        job = created.json()
        assert job["status"] in ("queued", "running") and created.headers["location"] == f"/v1/jobs/{job['id']}"
        seen = list(events(client, job["id"]))
        names = [name for name, _ in seen]
        assert names[-1] == "end" and "status" in names
        progress = [data for name, data in seen if name == "progress"]
        assert any(p["phase"] == "lip-syncing" for p in progress)
        done = [p["frames_done"] for p in progress if p["frames_total"]]
        assert done == sorted(done) and done[-1] == progress[-1]["frames_total"]
        end = seen[-1][1]
        assert end["status"] == "succeeded", end
        assert end["report"]["frames"] == progress[-1]["frames_total"] and end["report"]["outfile"] == "result.mp4"
        assert str(server.state_dir) not in str(end)

        result = client.get(end["result"])
        assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
        served = tmp_path / "served.mp4"
        served.write_bytes(result.content)
        part = client.get(end["result"], headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == result.content[100:200]

        listed = client.get("/v1/jobs").json()["jobs"]
        assert job["id"] in [j["id"] for j in listed]

    reference = tmp_path / "infer.mp4"
    cli = subprocess.run([sys.executable, "-m", "wav2lip_trt", "infer", "--checkpoint_path", str(checkpoints[0]),
                          "--face", str(media["face"]), "--audio", str(media["long"]), "--outfile", str(reference),
                          "--box", *map(str, BOX), "--crf", "23", "--device", "cpu", "-q"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    ours, theirs = decode_frames(served), decode_frames(reference)
    assert ours.shape == theirs.shape and ours.shape[0] == end["report"]["frames"]
    assert np.array_equal(ours, theirs)


def test_paths_under_the_allowed_root(server, media, tmp_path) -> None:
    outside = tmp_path / "elsewhere.wav"
    outside.write_bytes(media["short"].read_bytes())
    with server.client() as client:
        inside = client.post("/v1/jobs", data={"face_path": str(media["face"]), "audio_path": str(media["short"]),
                                               "options": '{"box": [30, 110, 40, 120]}'})
        assert inside.status_code == 202, inside.text
        assert wait_finished(client, inside.json()["id"])["status"] == "succeeded"
        for path in (outside, media["face"].parent / ".." / outside.parent.name / outside.name, Path("/etc/passwd")):
            refused = client.post("/v1/jobs", data={"face_path": str(media["face"]), "audio_path": str(path)})
            assert refused.status_code == 403, refused.text
            assert refused.json() == {"error": f"audio_path {path}: not a file under the allowed folders "
                                               "(--allow-path)"}
    assert media["face"].exists()  # a path job never deletes its inputs


def test_cancel_mid_run_leaves_nothing(server, media) -> None:
    with server.client() as client:
        job = cancel_mid_run(client, server, media)
        deleted = client.delete(f"/v1/jobs/{job['id']}")  # a finished job: deleted
        assert deleted.json() == {"id": job["id"], "status": "deleted"}
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
        # the worker kept its session: the next job runs
        after = submit(client, media["face"], media["short"], box=BOX).json()
        assert wait_finished(client, after["id"])["status"] == "succeeded"


def test_queue_full_is_429_with_retry_after(server, media) -> None:
    accepted = []
    with server.client() as client:
        try:
            for _ in range(4):
                response = submit(client, media["face"], media["slow"], box=BOX, wav2lip_batch_size=4)
                if response.status_code == 429:
                    break
                assert response.status_code == 202, response.text
                accepted.append(response.json()["id"])
                time.sleep(0.3)  # the worker takes the first job
            assert response.status_code == 429
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"].startswith("the queue is full")
            assert len(accepted) <= 2  # one running, one queued (--queue-size 1)
        finally:
            for job_id in accepted:
                client.delete(f"/v1/jobs/{job_id}")
            for job_id in accepted:
                assert wait_finished(client, job_id)["status"] == "cancelled"


def test_bad_requests_are_4xx_with_one_message(server, media, tmp_path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    truncated = tmp_path / "cut.wav"
    truncated.write_bytes(media["short"].read_bytes()[:30])
    huge = tmp_path / "huge.mp4"
    huge.write_bytes(b"\0" * (UPLOAD_LIMIT_MB * (1 << 20) + 1))
    cases = [
        (submit, (empty, media["short"]), {}, 400, "face empty.mp4: the file is empty"),
        (submit, (text, media["short"]), {}, 400, "notes.mp4"),
        (submit, (media["face"], truncated), {}, 400, "cut.wav"),
        (submit, (huge, media["short"]), {}, 413, "larger than the server's limit of 1 MiB"),
        (submit, (media["face"], media["short"]), {"box": [0, 500, 0, 500]}, 400, "--box [0, 500, 0, 500] reaches "
                                                                                  "outside the 160x128 frames of face.mp4"),
        (submit, (media["face"], media["short"]), {"ffmpeg": "/bin/sh"}, 400, "ffmpeg cannot be set"),
        (submit, (media["face"], media["short"]), {"checkpoint_path": "x.pth"}, 400, "chosen when the server starts"),
        (submit, (media["face"], media["short"]), {"colour": 3}, 400, "unknown option colour"),
        (submit, (media["face"], media["short"]), {"crf": "high"}, 400, "crf: expected a whole number"),
    ]
    with server.client() as client:
        for call, files, options, status, message in cases:
            response = call(client, *files, **options)
            assert response.status_code == status, (message, response.text)
            body = response.json()
            assert list(body) == ["error"] and "\n" not in body["error"] and message in body["error"], body
            assert str(server.state_dir) not in body["error"]
        for text_body, message in (('{"box": ', "options: not valid JSON"), ("[1]", "expected a JSON object")):
            response = client.post("/v1/jobs", files={"face": ("f.mp4", media["face"].read_bytes()),
                                                      "audio": ("a.wav", media["short"].read_bytes())},
                                   data={"options": text_body})
            assert response.status_code == 400 and message in response.json()["error"]
        def chunked():  # no Content-Length: the limit is counted as the body streams in
            yield b'--b\r\nContent-Disposition: form-data; name="face"; filename="big.mp4"\r\n\r\n'
            yield from (b"\0" * (1 << 19) for _ in range(2 * UPLOAD_LIMIT_MB + 1))
            yield b"\r\n--b--\r\n"

        streamed = client.post("/v1/jobs", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert streamed.status_code == 413 and "larger than the server's limit" in streamed.json()["error"]
        missing = client.post("/v1/jobs", files={"face": ("f.mp4", media["face"].read_bytes())})
        assert missing.status_code == 400 and missing.json()["error"].startswith("missing audio")
        assert client.get("/v1/jobs/nope").status_code == 404
        assert client.get("/v1/jobs?status=done").status_code == 400
    with server.client(token=None) as anonymous:
        response = submit(anonymous, media["face"], media["short"], box=BOX)
        assert response.status_code == 401 and response.json() == {"error": "missing bearer token (Authorization: "
                                                                            "Bearer TOKEN)"}
        assert anonymous.get("/healthz").status_code == 200 and anonymous.get("/").status_code == 200
    with server.client(token="wrong-token-0123456789") as wrong:
        assert wrong.get("/v1/jobs").json() == {"error": "wrong token"}
        assert wrong.get("/metrics").status_code == 401
    assert not any(p.name.startswith(".") and p.suffix == ".upload" for p in server.state_dir.rglob("*"))


def test_metrics_and_openapi(server, media) -> None:
    with server.client() as client:
        for audio in (media["short"], media["long"]):
            job = submit(client, media["face"], audio, box=BOX).json()
            assert wait_finished(client, job["id"])["status"] == "succeeded"
        text = client.get("/metrics")
        assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
        families = {family.name: family for family in text_string_to_metric_families(text.text)}
        jobs = {sample.labels["status"]: sample.value for sample in families["wav2lip_trt_jobs"].samples}
        assert set(jobs) == {"queued", "running", "succeeded", "failed", "cancelled"} and jobs["succeeded"] >= 1
        assert families["wav2lip_trt_workers_ready"].samples[0].value == 1
        assert "wav2lip_trt_queue_length" in families and "wav2lip_trt_job_seconds" in families
        assert families["wav2lip_trt_frames"].samples[0].value > 0
        first = client.get("/v1/jobs", params={"limit": 1}).json()
        assert len(first["jobs"]) == 1 and first["jobs"][0]["id"] == job["id"]  # newest first
        following = client.get("/v1/jobs", params={"limit": 1, "before": first["next_before"]}).json()
        assert len(following["jobs"]) == 1 and following["jobs"][0]["created"] < first["jobs"][0]["created"]
        schema = client.get("/openapi.json").json()
        assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/result"} <= \
            set(schema["paths"])
        assert "delete" in schema["paths"]["/v1/jobs/{job_id}"]


def test_a_public_bind_needs_a_token(checkpoints, tmp_path) -> None:
    refused = subprocess.run([sys.executable, "-m", "wav2lip_trt", "serve", "--checkpoint_path", str(checkpoints[0]),
                              "--host", "0.0.0.0", "--state-dir", str(tmp_path / "state")],
                             capture_output=True, text=True, timeout=120,
                             env={k: v for k, v in os.environ.items() if k != "WAV2LIP_TRT_TOKEN"})
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "Error: --host 0.0.0.0 is reachable from other machines: give --token (or set WAV2LIP_TRT_TOKEN) so every "
        "request must carry it, or bind 127.0.0.1"]


def test_frames_metric_counts_output_frames_only(checkpoints, tmp_path) -> None:
    """A job that detects reports input frames while detecting, then output frames: only the latter are written."""
    from wav2lip_trt.serve.config import ServeConfig
    from wav2lip_trt.serve.service import JobService

    service = JobService(ServeConfig(checkpoint_path=checkpoints[0], device="cpu", workers=1,
                                     state_dir=tmp_path / "state", keep_hours=0))
    service.job_started("j", 1)
    service.job_phase("j", "detecting faces")
    service.job_total("j", 40)
    for done in (16, 32, 40):
        service.job_frame("j", done)
    service.job_phase("j", "lip-syncing")
    service.job_total("j", 25)
    for done in (16, 25):
        service.job_frame("j", done)
    samples = {sample.name: sample.value for sample in service.metrics.frames.collect()[0].samples}
    assert samples["wav2lip_trt_frames_total"] == 25


def test_the_page_and_its_scripts_are_served_and_nothing_else(server) -> None:
    with server.client() as client:
        page = client.get("/")
        assert page.status_code == 200
        scripts = re.findall(r'<script src="(/static/[^"]+)"', page.text)
        assert scripts == ["/static/app.js", "/static/live.js"]
        for url in scripts:
            answer = client.get(url)
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/javascript")
            assert "function" in answer.text
        assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
        for name in ("index.html", "missing.js", "..%2Fapp.py", "%2E%2E%2Fservice.py"):
            answer = client.get("/static/" + name)
            assert answer.status_code == 404 and set(answer.json()) == {"error"}, name
