"""`WS /v1/live`: a live session against a real server process, with a real websocket client.

Audio sent in 200 ms chunks comes back as the frames `wav2lip-trt stream --avatar` makes (each
JPEG the one OpenCV makes of that frame); a session never queues (1013 when the one worker is busy);
a client that goes away frees the worker for the next session, with no process left behind;
unknown avatars, bad parameters and tokens are refused with one message and 1008.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve_server import BOX, TOKEN, serve_media, start_server
from test_serve_avatars import create_avatar, wait_avatar

websockets = pytest.importorskip("websockets.sync.client", reason="the serve extra brings websockets")
from websockets.exceptions import ConnectionClosed  # noqa: E402

CHUNK_BYTES = 3200 * 2  # 200 ms of 16 kHz s16le mono
JPEG_QUALITY = 90  # the server's (serve.tasks.LIVE_DEFAULTS)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("live_media")
    return serve_media(folder, "speech", "long")


@pytest.fixture(scope="module")
def live(tmp_path_factory, checkpoints, media):
    """(server with one worker, a prepared avatar's id)."""
    server = start_server(tmp_path_factory.mktemp("serve_live"), checkpoints)
    with server.client() as client:
        avatar = wait_avatar(client, create_avatar(client, media["face"], box=BOX).json()["id"])
    assert avatar["status"] == "succeeded", avatar
    yield server, avatar["id"]
    assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output()


def connect(server: Any, token: str | None = TOKEN, compression: str | None = "deflate", **params: Any) -> Any:
    query = "&".join(f"{k}={v}" for k, v in {**params, **({"token": token} if token else {})}.items())
    return websockets.connect(f"{server.url.replace('http', 'ws', 1)}/v1/live?{query}", open_timeout=30,
                              compression=compression)


def pcm(wav: Path) -> bytes:
    data = wav.read_bytes()
    assert data[36:40] == b"data"  # write_wav's plain 44-byte header
    return data[44:]


def receive_all(ws: Any, timeout: float = 300.0) -> tuple[list[tuple[dict[str, Any], bytes]], dict[str, Any], int]:
    """Frames (header, JPEG) until the closing text message; (frames, that message, close code)."""
    frames = []
    while True:
        message = ws.recv(timeout)
        if isinstance(message, str):
            last = json.loads(message)
            break
        size = int.from_bytes(message[:4], "big")
        frames.append((json.loads(message[4 : 4 + size]), message[4 + size :]))
    with pytest.raises(ConnectionClosed):
        ws.recv(30)
    return frames, last, ws.close_code


def refused(ws: Any) -> tuple[dict[str, Any], int]:
    message = json.loads(ws.recv(30))
    with pytest.raises(ConnectionClosed):
        ws.recv(30)
    return message, ws.close_code


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def test_live_frames_are_the_stream_commands(live, media, checkpoints, tmp_path) -> None:
    server, avatar_id = live
    audio = pcm(media["speech"])
    with connect(server, avatar=avatar_id) as ws:
        ready = json.loads(ws.recv(30))
        assert ready == {"type": "ready", "avatar": avatar_id, "fps": 25.0, "width": 160, "height": 128}
        for start in range(0, len(audio), CHUNK_BYTES):
            ws.send(audio[start : start + CHUNK_BYTES])
        ws.send(json.dumps({"type": "close"}))
        frames, end, code = receive_all(ws)
    assert end["type"] == "end" and code == 1000, end
    assert end["report"]["frames"] == len(frames) and end["report"]["avatar"] == avatar_id

    saved = tmp_path / "frames"
    done = subprocess.run([sys.executable, "-m", "wav2lip_trt", "stream", "--avatar",
                           str(server.state_dir / "avatars" / avatar_id), "--audio", str(media["speech"]),
                           "--outfile", str(tmp_path / "stream.mp4"), "--save-frames", str(saved),
                           "--checkpoint_path", str(checkpoints[0]), "--device", "cpu", "-q"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    expected = sorted(saved.glob("frame_*.png"))
    assert len(frames) == len(expected) > 0
    for i, ((header, jpeg), png) in enumerate(zip(frames, expected)):
        assert header["index"] == i and header["pts"] == i / 25.0
        assert isinstance(header["latency_ms"], float) and header["latency_ms"] >= 0
        ok, same = cv2.imencode(".jpg", cv2.imread(str(png)), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        assert ok and same.tobytes() == jpeg, f"frame {i} differs from the stream command's"


def test_busy_worker_is_1013_and_a_client_that_leaves_frees_it(live, media) -> None:
    server, avatar_id = live
    workers = children(server.process.pid)
    audio, long = pcm(media["speech"]), pcm(media["long"])
    with connect(server, avatar=avatar_id) as first:
        assert json.loads(first.recv(30))["type"] == "ready"
        for start in range(0, len(long), CHUNK_BYTES):  # 6 s at once: far ahead of the worker, whose feed blocks
            first.send(long[start : start + CHUNK_BYTES])
        assert isinstance(first.recv(300), bytes)  # the worker is mid-stream
        with connect(server, avatar=avatar_id) as second:
            message, code = refused(second)
        assert code == 1013 and message["type"] == "error" and "no free worker" in message["error"], message
    # the first client left mid-stream (no close message) with seconds of audio not yet fed: its session is
    # aborted at once (not after the abort's 10 s and a kill) and the same worker is free
    deadline = time.monotonic() + 60
    while True:
        with connect(server, avatar=avatar_id) as third:
            first_message = json.loads(third.recv(30))
            if first_message["type"] == "ready":
                third.send(audio)
                third.send(json.dumps({"type": "close"}))
                frames, end, code = receive_all(third)
                break
        assert first_message.get("error", "").startswith("no free worker") and time.monotonic() < deadline
        time.sleep(0.5)
    assert code == 1000 and end["report"]["frames"] == len(frames) > 0
    assert children(server.process.pid) == workers  # the same worker: not killed, nothing left running
    assert "killed" not in server.output() and "died" not in server.output()
    with server.client() as client:
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert families["wav2lip_trt_live_sessions"].samples[0].value == 0
    assert families["wav2lip_trt_live_frames"].samples[0].value >= len(frames) + 1


def test_refusals_are_one_message_and_1008(live) -> None:
    server, avatar_id = live
    cases = [
        (dict(avatar="nope"), TOKEN, "no avatar nope (never created, or deleted)"),
        (dict(), TOKEN, "give the avatar to animate"),
        (dict(avatar=avatar_id, rate="fast"), TOKEN, "rate must be a sample rate in Hz"),
        (dict(avatar=avatar_id, clock="moon"), TOKEN, "clock must be one of audio, wall"),
        (dict(avatar=avatar_id), "wrong-token-0123456789", "wrong token"),
        (dict(avatar=avatar_id), None, "missing bearer token"),
    ]
    for params, token, wording in cases:
        with connect(server, token=token, **params) as ws:
            message, code = refused(ws)
        assert code == 1008 and message["type"] == "error" and wording in message["error"], (params, message)
        assert str(server.state_dir) not in message["error"]
    with connect(server, avatar=avatar_id) as ws:  # a text message that is not the close
        assert json.loads(ws.recv(30))["type"] == "ready"
        ws.send("hello")
        message, code = refused(ws)
    assert code == 1008 and "expected binary PCM" in message["error"], message
    with connect(server, avatar=avatar_id) as ws:  # half a sample at the end is the client's error
        assert json.loads(ws.recv(30))["type"] == "ready"
        ws.send(b"\0\0\0")
        ws.send(json.dumps({"type": "close"}))
        while isinstance(message := ws.recv(300), bytes):
            pass
        assert "ended inside a sample" in json.loads(message)["error"]
        with pytest.raises(ConnectionClosed):
            ws.recv(30)
    assert ws.close_code == 1008
    assert os.path.isdir(server.state_dir / "avatars" / avatar_id)


def test_another_rate_is_resampled_and_the_wall_clock_paces(live, media) -> None:
    """8 kHz PCM (resampled as `stream --audio - --rate` does) on the wall clock (late frames dropped, not held)."""
    import numpy as np
    import soxr

    server, avatar_id = live
    samples = np.frombuffer(pcm(media["speech"]), dtype="<i2").astype(np.float32) / 32768
    low = (soxr.resample(samples, 16000, 8000) * 32767).astype("<i2").tobytes()
    with connect(server, avatar=avatar_id, rate=8000, clock="wall") as ws:
        assert json.loads(ws.recv(30))["type"] == "ready"
        for start in range(0, len(low), CHUNK_BYTES // 2):
            ws.send(low[start : start + CHUNK_BYTES // 2])
        ws.send(json.dumps({"type": "close"}))
        frames, end, code = receive_all(ws)
    assert code == 1000 and end["type"] == "end", end
    report = end["report"]
    assert (report["clock"], report["policy"]) == ("wall", "drop")
    assert report["frames"] == len(frames) > 0 and abs(report["audio_seconds"] - 1.0) < 0.05
    indices = [header["index"] for header, _ in frames]
    assert indices == sorted(set(indices))  # in order, each once (some may be dropped)
    assert all(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (128, 160, 3)
               for _, jpeg in frames)


def rss(pid: int, *, with_children: bool = True) -> int:
    """Resident bytes of ``pid`` and (``with_children``) its children: the server and its workers."""
    total = 0
    for each in (pid, *(children(pid) if with_children else ())):
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except FileNotFoundError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) * 1024
    return total


def test_a_client_that_sends_and_never_reads_is_pushed_back(live) -> None:
    """Memory stays bounded by back-pressure: PCM pushed as fast as a client can, frames never read. Once the
    kernel buffers and the bounded queues are full (seconds), the server takes audio only as fast as its
    worker makes frames, and neither it nor its worker grows. (Noise, uncompressed: compressed silence would
    put almost nothing on the wire.)"""
    import socket
    import threading

    import numpy as np

    server, avatar_id = live
    total, sent = 160 << 20, [0]
    noise = np.random.default_rng(0).integers(-32768, 32767, size=8 << 20, dtype=np.int16).tobytes()
    ws = connect(server, avatar=avatar_id, compression=None).__enter__()
    assert json.loads(ws.recv(30))["type"] == "ready"

    def push() -> None:
        try:
            while sent[0] < total:
                at = sent[0] % (len(noise) - CHUNK_BYTES)
                ws.send(noise[at : at + CHUNK_BYTES])
                sent[0] += CHUNK_BYTES
        except Exception:  # the socket is shut down below
            pass

    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()
    time.sleep(8)  # the buffers fill, the worker has made its first frames
    pid = server.process.pid
    taken, before, before_all = sent[0], rss(pid, with_children=False), rss(pid)
    time.sleep(8)
    grown, grown_all = rss(pid, with_children=False) - before, rss(pid) - before_all
    try:
        assert pusher.is_alive(), f"the server took all {total >> 20} MiB at once"
        assert sent[0] - taken < 4 << 20, f"{(sent[0] - taken) >> 20} MiB more taken in 8 s"
        # the server is where audio taken and not yet used would pile up; a worker's heap still climbs to the
        # high-water of its largest generator batch (bounded by the stream's options, not by what is sent)
        assert grown < 32 << 20, f"the server grew by {grown >> 20} MiB in 8 s"
        assert grown_all < 256 << 20, f"server and workers grew by {grown_all >> 20} MiB in 8 s"
    finally:
        ws.socket.shutdown(socket.SHUT_RDWR)
        ws.socket.close()
        pusher.join(30)
    deadline = time.monotonic() + 90
    with server.client() as client:
        while True:
            families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
            if families["wav2lip_trt_live_sessions"].samples[0].value == 0:
                break
            assert time.monotonic() < deadline, "the session did not end after the client went away"
            time.sleep(0.5)
