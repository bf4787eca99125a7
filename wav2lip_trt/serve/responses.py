"""The one error body of the HTTP API: ``{"error": "one line"}``.

The exception handlers of :mod:`.app` and the ASGI middlewares (auth, size limit, request timeout,
storage gate), which answer before or around FastAPI, all answer through :func:`error_response`, so
every error a client sees has the same shape. A middleware that refuses a body while the app reads it
(too big, too slow) raises :class:`BodyRefused` from its ``receive`` under :func:`run_refusable`.
"""

from __future__ import annotations

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": message}`` with ``status``; the message is one line (the CLI's wording for a user error)."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BodyRefused(BaseException):
    """Raised from a wrapped ``receive`` to stop the app and answer ``response`` instead.

    Not an Exception: FastAPI turns any Exception raised while it parses a body into a 400.
    """

    def __init__(self, response: Response) -> None:
        super().__init__()
        self.response = response


class TrackedSend:
    """An ASGI ``send`` that remembers whether the answer began (after that, no other answer can be sent)."""

    def __init__(self, send: Send) -> None:
        self.send, self.started = send, False

    async def __call__(self, message: Message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)


async def run_refusable(app: ASGIApp, scope: Scope, receive: Receive, send: Send, wrapped: Receive) -> None:
    """Run ``app`` reading through ``wrapped``; a :class:`BodyRefused` it raises is answered if no answer began."""
    tracked = TrackedSend(send)
    try:
        await app(scope, wrapped, tracked)
    except BodyRefused as refused:
        if not tracked.started:
            await refused.response(scope, receive, send)
