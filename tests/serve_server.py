"""A real `wav2lip-trt serve` process on a free port, and the small client helpers its tests share."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from wav2lip_trt.samples import float_to_int16, speechlike_audio, write_wav

from jobs_media import write_media

TOKEN = "test-token-0123456789abcdef"
BOX = [30, 110, 40, 120]  # inside the 160x128 test clips: no S3FD, so the tests stay fast
START_SECONDS = 120.0
SPEECH = {"speech": (1.0, 5), "slow": (3.0, 4), "long": (6.0, 6)}  # extra audios: name -> (seconds, seed)


def serve_media(folder: Path, *names: str) -> dict[str, Path]:
    """The jobs' generated face and audios (:func:`jobs_media.write_media`), plus the named speech-like WAVs of
    :data:`SPEECH` as ``NAME.wav``."""
    found = write_media(folder)
    for name in names:
        seconds, seed = SPEECH[name]
        found[name] = write_wav(folder / f"{name}.wav", float_to_int16(speechlike_audio(seconds, seed=seed)), 16000)
    return found


def cancel_mid_run(client: httpx.Client, server: Server, media: dict[str, Path]) -> dict[str, Any]:
    """A slow job cancelled once it makes frames: it ends cancelled by the client, with its folder gone and no
    result (409); the job as submitted."""
    job = submit(client, media["face"], media["slow"], box=BOX, wav2lip_batch_size=4).json()
    wait_frames(client, job["id"], 1)
    cancelled = client.delete(f"/v1/jobs/{job['id']}")
    assert cancelled.status_code == 200, cancelled.text
    end = wait_finished(client, job["id"])
    assert end["status"] == "cancelled" and end["error"] == "cancelled by a client"
    assert not (server.state_dir / "jobs" / job["id"]).exists()
    assert client.get(f"/v1/jobs/{job['id']}/result").status_code == 409
    return job


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    state_dir: Path
    log: Path
    token: str | None

    def client(self, token: str | None = "default", **kwargs: Any) -> httpx.Client:
        token = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"serve did not stop {timeout:g} s after {signal.Signals(sig).name}:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(folder: Path, checkpoints: tuple[Path, Path], *extra: str | Path, token: str | None = TOKEN,
                 workers: int | None = 1, state_dir: Path | None = None) -> Server:
    """Start serve and wait until a worker has its models loaded (``/readyz``)."""
    port = free_port()
    state_dir = state_dir or folder / "state"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"serve-{port}.log"
    args = [sys.executable, "-m", "wav2lip_trt", "serve", "--checkpoint_path", str(checkpoints[0]),
            "--s3fd-checkpoint", str(checkpoints[1]), "--device", "cpu",
            *(("--workers", str(workers)) if workers is not None else ()),
            "--port", str(port), "--state-dir", str(state_dir), *map(str, extra)]
    if token is not None:
        args += ["--token", token]
    env = {k: v for k, v in os.environ.items() if k != "WAV2LIP_TRT_TOKEN"}
    with open(log, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", process, state_dir, log, token)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited with {process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop(signal.SIGKILL)
    raise AssertionError(f"serve not ready after {START_SECONDS:g} s:\n{server.output()}")


def submit(client: httpx.Client, face: Path, audio: Path, **options: Any) -> httpx.Response:
    with open(face, "rb") as f, open(audio, "rb") as a:
        return client.post("/v1/jobs", files={"face": (face.name, f), "audio": (audio.name, a)},
                           data={"options": json.dumps(options)})


def events(client: httpx.Client, job_id: str, until: Any = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """The job's server-sent events as (name, data), to its ``end`` (or until ``until(name, data)`` is true)."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=120.0) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: "):])
                yield name, data
                if name == "end" or (until is not None and until(name, data)):
                    return


def wait_finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    for name, data in events(client, job_id):
        if name == "end":
            return data
    raise AssertionError(f"job {job_id}: the event stream ended without an end event")


def wait_frames(client: httpx.Client, job_id: str, frames: int = 1) -> None:
    """Until the job has written ``frames`` frames (it is mid-run)."""
    for name, data in events(client, job_id, until=lambda n, d: n == "progress" and d["frames_done"] >= frames):
        if name == "end":
            raise AssertionError(f"job {job_id} ended before {frames} frames: {data}")
