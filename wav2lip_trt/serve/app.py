"""The HTTP transport: FastAPI routes over a :class:`~.service.JobService`, auth, limits and error bodies.

Every error answer is ``{"error": "one line"}`` with a 4xx status saying whose problem it is (a user
error: the CLI's wording) or, for a bug, a 500 with one line and the traceback only in the log.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..errors import Wav2LipTrtError
from .events import stream
from .live import add_routes as add_live_routes, refuse
from .metrics import CONTENT_TYPE
from .quota import StorageGate
from .responses import BodyRefused, TrackedSend, error_response, run_refusable
from .service import JobNotFound, JobService, QueueFull
from .store import STATUSES
from .timeouts import RequestTimeout
from .uploads import Incoming, UploadError

log = logging.getLogger(__name__)

STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}
OPEN_PATHS = ("/", "/healthz", "/readyz", "/static/")  # no token needed: no job data behind them
QUERY_TOKEN_PATHS = ("/events", "/result")  # EventSource and <video src> cannot send a header


def create_app(service: JobService) -> FastAPI:
    """The ASGI app; its lifespan starts the workers and, on shutdown, drains them."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        service.hub.attach(asyncio.get_running_loop())
        await asyncio.to_thread(service.start)
        try:
            yield
        finally:
            await asyncio.to_thread(service.shutdown)

    app = FastAPI(title="wav2lip-trt", version=__version__, lifespan=lifespan,
                  description="Lip-sync jobs: upload a face and an audio, follow the progress, download the video.")
    _errors(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_static("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        kind = STATIC_TYPES.get(Path(name).suffix)
        if kind is None or name not in _static_names():
            raise StarletteHTTPException(404, f"no such file: {name}")
        return Response(_static(name), media_type=kind)

    @app.get("/healthz", summary="The process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="At least one worker has its models loaded")
    def readyz() -> JSONResponse:
        ready = service.pool.ready
        body = {"ready": ready > 0 and service.failure is None and not service.stopping, "workers_ready": ready,
                "workers": service.workers}
        if service.failure is not None:
            body["error"] = service.failure
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics", summary="Prometheus text", response_class=Response)
    def metrics() -> Response:
        return Response(service.metrics.text(), media_type=CONTENT_TYPE)

    @app.post("/v1/jobs", status_code=202, summary="Start a lip-sync job")
    async def create_job(
        request: Request,
        face: UploadFile | None = File(None, description="Face video or image"),
        audio: UploadFile | None = File(None, description="Speech audio (anything ffmpeg decodes)"),
        face_path: str | None = Form(None, description="Instead of face: a file under --allow-path"),
        audio_path: str | None = Form(None, description="Instead of audio: a file under --allow-path"),
        options: str | None = Form(None, description='Job options as a JSON object, named as in a jobs file, '
                                                      'e.g. {"box": [30, 110, 40, 120], "crf": 23}'),
        avatar: str | None = Form(None, description="Instead of face: an avatar's id (POST /v1/avatars); the job "
                                                    "streams it with the audio, as `wav2lip-trt stream` does"),
    ) -> JSONResponse:
        inputs = [_incoming("face", face, face_path), _incoming("audio", audio, audio_path)]
        client = request.client.host if request.client is not None else None
        job = await asyncio.to_thread(service.submit, *inputs, options, client, avatar or None)
        return JSONResponse(job, status_code=202, headers={"Location": f"/v1/jobs/{job['id']}"})

    @app.get("/v1/jobs", summary="A page of jobs, newest first")
    def list_jobs(limit: int = 20, before: float | None = None, status: str | None = None) -> dict[str, Any]:
        if status is not None and status not in STATUSES:
            raise UploadError(f"status must be one of {', '.join(STATUSES)}, got {status}")
        if limit < 1:
            raise UploadError(f"limit must be at least 1, got {limit}")
        return service.page(limit, before, status)

    @app.get("/v1/jobs/{job_id}", summary="A job: status, progress, report or error")
    def get_job(job_id: str) -> dict[str, Any]:
        return service.view(job_id)

    @app.get("/v1/jobs/{job_id}/events", summary="Server-sent events: status, progress (phase, frames, ETA), end")
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        service.view(job_id)  # 404 before the stream starts

        def snapshot() -> dict[str, Any] | None:
            try:
                return service.view(job_id)
            except JobNotFound:
                return None

        events = stream(service.hub, job_id, snapshot, lambda: service.stopping, request.is_disconnected)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/jobs/{job_id}/result", summary="The video (range requests supported)", response_class=FileResponse)
    def job_result(job_id: str, download: bool = False) -> FileResponse:
        path = service.result(job_id)
        name = f"wav2lip-{job_id}.mp4"
        return FileResponse(path, media_type="video/mp4", filename=name if download else None,
                            content_disposition_type="attachment" if download else "inline")

    @app.delete("/v1/jobs/{job_id}", summary="Cancel a queued or running job, or delete a finished one")
    def delete_job(job_id: str) -> dict[str, Any]:
        return service.cancel_or_delete(job_id)

    add_live_routes(app, service)  # /v1/avatars and WS /v1/live

    config = service.config
    guarded = SizeLimit(BearerAuth(StorageGate(app, service.quota), config.token), config.max_upload_bytes)
    return Guard(RequestTimeout(guarded, config.request_timeout))


def _incoming(field: str, upload: UploadFile | None, path: str | None) -> Incoming:
    if upload is not None and path:
        raise UploadError(f"give either {field} (an upload) or {field}_path, not both")
    if upload is not None:
        return Incoming(field, upload.filename or field, stream=upload.file)
    return Incoming(field, path or "", path=path or None)


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


@functools.cache
def _static_names() -> frozenset[str]:
    """The page's own files: a request names one of them or gets 404 (no path is built from it)."""
    return frozenset(entry.name for entry in resources.files(__package__).joinpath("static").iterdir())


def _errors(app: FastAPI) -> None:
    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return error_response(exc.status, str(exc))

    @app.exception_handler(Wav2LipTrtError)
    async def user_error(request: Request, exc: Wav2LipTrtError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(JobNotFound)
    async def not_found(request: Request, exc: JobNotFound) -> JSONResponse:
        return error_response(404, f"no job {exc.args[0]} (never created, or deleted)")

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return error_response(429, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path"))
        return error_response(422, f"{where}: {first.get('msg')}" if where else str(first.get("msg")))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__} (a bug; the traceback is in the "
                                   "server's log)")


class Guard:
    """Outermost: a bug below has been answered (500, one line) and logged; it goes no further.

    Starlette re-raises an exception after its handler answered, for the server to log; uvicorn
    would then log it again and drop the connection, so the client would not read the answer.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracked = TrackedSend(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if scope["type"] != "http":
                raise
            if not tracked.started:
                log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
                await error_response(500, "internal error (a bug; the traceback is in the server's log)")(
                    scope, receive, send)


class BearerAuth:
    """With a token, every request but the page, its files and the health checks must carry it;
    a websocket too, in the header or (browsers cannot set one) as ``?token=``."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = scope["type"] == "websocket"
        if self.token is None or scope["type"] not in ("http", "websocket") or _open(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = _bearer(scope)
        if given is None and (websocket or scope["method"] == "GET" and scope["path"].endswith(QUERY_TOKEN_PATHS)):
            given = _query_token(scope)
        if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            message = "missing bearer token (Authorization: Bearer TOKEN)" if given is None else "wrong token"
            if websocket:
                await refuse(scope, receive, send, message + (" (or ?token=TOKEN)" if given is None else ""))
                return
            await error_response(401, message, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith("/static/")


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _query_token(scope: Scope) -> str | None:
    from urllib.parse import parse_qs

    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None


class SizeLimit:
    """Refuse a request body over ``limit`` bytes: at once by its Content-Length, else as it streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = error_response(413, f"the request is larger than the server's limit of "
                                      f"{self.limit / (1 << 20):g} MiB (--max-upload-mb)")
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await too_big(scope, receive, send)
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyRefused(too_big)
            return message

        await run_refusable(self.app, scope, receive, send, counted)
