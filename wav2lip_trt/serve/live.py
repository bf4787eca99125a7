"""The avatar routes and ``WS /v1/live``: a live session over a websocket, on a worker of its own.

The protocol (shared with the page and ``serve --ray``)::

    client -> server  binary: raw PCM s16le mono at ?rate= (default 16000); text {"type": "close"}: end of audio
    server -> client  text {"type": "ready", "avatar", "fps", "width", "height"} first;
                      binary per frame: 4-byte big-endian header length N, N bytes of JSON
                      {"index", "pts", "latency_ms"}, then the frame's JPEG;
                      text {"type": "end", "report": {...}} then close 1000;
                      on an error text {"type": "error", "error": "..."} then close 1008 (the request's
                      fault), 1011 (the server's) or 1013 (no free worker: try again later).

A session never queues: with no free worker it is refused at once. Memory stays bounded whatever
the client does: one frame and one PCM message are in this process at a time per session, the
pipe to the worker holds the rest (:mod:`.channel`), and a client that reads slowly is pushed back
on by TCP. A client that goes away aborts the session: its worker is free again (or killed and
replaced when it does not stop).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, File, Form, Request, UploadFile, WebSocket
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Gauge
from starlette.types import Receive, Scope, Send

from ..errors import Wav2LipTrtError
from .channel import CLOSE_INTERNAL, CLOSE_NORMAL, CLOSE_POLICY, LiveBusy, LiveChannel, LiveFailed
from .uploads import Incoming, UploadError

if TYPE_CHECKING:
    from .service import JobService

log = logging.getLogger(__name__)

CLOCKS = ("audio", "wall")  # wav2lip_trt.live.stream.CLOCKS (not imported: it loads torch)
MAX_RATE = 768000


class LiveMetrics:
    """``wav2lip_trt_live_sessions`` (open now) and ``wav2lip_trt_live_frames_total`` (sent), on the server's registry."""

    def __init__(self, registry: Any) -> None:
        self.sessions = Gauge("wav2lip_trt_live_sessions", "Live sessions open now.", registry=registry)
        self.frames = Counter("wav2lip_trt_live_frames", "Frames sent to live sessions.", registry=registry)


def add_routes(app: FastAPI, service: JobService) -> None:
    """``/v1/avatars`` and ``WS /v1/live`` on ``app``."""
    avatars = service.avatars
    metrics = LiveMetrics(service.metrics.registry)

    @app.post("/v1/avatars", status_code=202, summary="Prepare an avatar: a face for live sessions and avatar jobs")
    async def create_avatar(
        request: Request,
        face: UploadFile | None = File(None, description="Face video or image"),
        face_path: str | None = Form(None, description="Instead of face: a file under --allow-path"),
        options: str | None = Form(None, description='Avatar options as a JSON object, named as in a jobs file, and '
                                                      '"loop" (forward or pingpong), e.g. {"box": [30, 110, 40, 120]}'),
    ) -> JSONResponse:
        if face is not None and face_path:
            raise UploadError("give either face (an upload) or face_path, not both")
        incoming = Incoming("face", face.filename or "face", stream=face.file) if face is not None else \
            Incoming("face", face_path or "", path=face_path or None)
        client = request.client.host if request.client is not None else None
        avatar = await asyncio.to_thread(service.submit_avatar, incoming, options, client)
        return JSONResponse(avatar, status_code=202, headers={"Location": f"/v1/avatars/{avatar['id']}"})

    @app.get("/v1/avatars", summary="A page of avatars, newest first")
    def list_avatars(limit: int = 20, before: float | None = None) -> dict[str, Any]:
        if limit < 1:
            raise UploadError(f"limit must be at least 1, got {limit}")
        return avatars.page(limit, before)

    @app.get("/v1/avatars/{avatar_id}", summary="An avatar: status, error, frames, size, fps, loop")
    def get_avatar(avatar_id: str) -> dict[str, Any]:
        return avatars.view(avatar_id)

    @app.delete("/v1/avatars/{avatar_id}", summary="Delete an avatar (cancel it while it is being prepared)")
    def delete_avatar(avatar_id: str) -> dict[str, Any]:
        return avatars.delete(avatar_id)

    @app.websocket("/v1/live")
    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        await LiveSocket(websocket, service, metrics).run()


@dataclass
class _Client:
    gone: bool = False  # the client disconnected
    problem: tuple[str, int] | None = None  # the client broke the protocol: (message, close code)


class LiveSocket:
    """One websocket's live session, from the checks to the close."""

    def __init__(self, websocket: WebSocket, service: JobService, metrics: LiveMetrics) -> None:
        self.ws, self.service, self.metrics = websocket, service, metrics
        self.client = _Client()

    async def run(self) -> None:
        params = self.ws.query_params
        avatar_id = params.get("avatar") or ""
        try:
            settings = _settings(params)
            if not avatar_id:
                raise UploadError("give the avatar to animate: /v1/live?avatar=ID")
            folder, view = await asyncio.to_thread(self.service.avatars.folder, avatar_id)
            channel = await asyncio.to_thread(self.service.pool.open_live, folder, settings)
        except LiveBusy as exc:
            await self._fail(str(exc), exc.code)
            return
        except Wav2LipTrtError as exc:
            await self._fail(str(exc), CLOSE_POLICY)
            return
        except Exception as exc:  # a bug: one line to the client, the traceback to the log
            log.exception("live session of avatar %s could not start", avatar_id)
            await self._fail(f"internal error: {type(exc).__name__} (a bug; the traceback is in the server's log)",
                             CLOSE_INTERNAL)
            return
        self.metrics.sessions.inc()
        feeder = asyncio.create_task(self._feed(channel))
        try:
            await self.ws.send_json({"type": "ready", "avatar": avatar_id, "fps": view["fps"], "width": view["width"],
                                     "height": view["height"]})
            await self._send_frames(channel)
            report = {"avatar": avatar_id, **channel.report()}
            await self.ws.send_json({"type": "end", "report": report})
            await self.ws.close(CLOSE_NORMAL)
        except LiveFailed as exc:
            if self.client.problem is not None:
                await self._fail(*self.client.problem)
            elif not self.client.gone:
                await self._fail(_client_words(str(exc), folder, avatar_id), exc.code)
        except Exception as exc:  # the client went away mid-send (uvicorn raises its own kinds), or a bug
            if not self.client.gone and not _disconnected(exc):
                log.exception("live session of avatar %s failed", avatar_id)
                await self._fail(f"internal error: {type(exc).__name__} (a bug; the traceback is in the server's log)",
                                 CLOSE_INTERNAL)
        finally:
            feeder.cancel()
            await asyncio.to_thread(channel.abort)
            self.metrics.sessions.dec()

    async def _send_frames(self, channel: LiveChannel) -> None:
        frames = channel.frames()
        while True:
            item = await asyncio.to_thread(next, frames, None)
            if item is None:
                return
            header, jpeg = item
            head = json.dumps(header).encode()
            await self.ws.send_bytes(len(head).to_bytes(4, "big") + head + jpeg)
            self.metrics.frames.inc()

    async def _feed(self, channel: LiveChannel) -> None:
        """The client's messages into the channel until it goes away; a protocol error stops the session."""
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    self.client.gone = True
                    break
                if message.get("bytes") is not None:
                    await asyncio.to_thread(channel.feed, message["bytes"])
                elif _is_close(message.get("text")):
                    await asyncio.to_thread(channel.close)
                else:
                    self.client.problem = ('expected binary PCM (s16le mono) or the text {"type": "close"}, got '
                                           f"{str(message.get('text'))[:60]!r}", CLOSE_POLICY)
                    break
        except LiveFailed as exc:  # the session ended (its error reaches the client from the frames' side)
            if exc.code == CLOSE_POLICY and "after the end" in str(exc):
                self.client.problem = (str(exc), CLOSE_POLICY)
            else:
                return
        except Exception:  # the connection broke
            self.client.gone = True
        await asyncio.to_thread(channel.abort)

    async def _fail(self, message: str, code: int) -> None:
        try:
            await self.ws.send_json({"type": "error", "error": message})
            await self.ws.close(code)
        except Exception:  # the client is gone already
            pass


def _settings(params: Any) -> dict[str, Any]:
    rate_text = params.get("rate", "16000")
    try:
        rate = int(rate_text)
    except ValueError:
        rate = 0
    if not 0 < rate <= MAX_RATE:
        raise UploadError(f"rate must be a sample rate in Hz, 1..{MAX_RATE}, got {rate_text}")
    clock = params.get("clock", "audio")
    if clock not in CLOCKS:
        raise UploadError(f"clock must be one of {', '.join(CLOCKS)}, got {clock}")
    return {"rate": rate, "clock": clock}


def _is_close(text: str | None) -> bool:
    try:
        message = json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        return False
    return isinstance(message, dict) and message.get("type") == "close"


def _disconnected(exc: Exception) -> bool:
    """The client went away while the server sent (uvicorn raises an OSError, Starlette its own kinds)."""
    from starlette.websockets import WebSocketDisconnect

    return isinstance(exc, (WebSocketDisconnect, OSError)) or isinstance(exc, RuntimeError) and "close" in str(exc)


def _client_words(message: str, folder: Any, avatar_id: str) -> str:
    return message.replace(str(folder), f"avatar {avatar_id}")


async def refuse(scope: Scope, receive: Receive, send: Send, message: str, code: int = CLOSE_POLICY) -> None:
    """Answer a websocket before the app sees it (a missing or wrong token): the error message, then ``code``."""
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps({"type": "error", "error": message})})
    await send({"type": "websocket.close", "code": code})
