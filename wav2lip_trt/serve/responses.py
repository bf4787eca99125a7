"""The one error body of the HTTP API: ``{"error": "one line"}``.

The exception handlers of :mod:`.app` and the ASGI middlewares (auth, size limit, request timeout,
storage gate), which answer before or around FastAPI, all answer through :func:`error_response`, so
every error a client sees has the same shape.
"""

from __future__ import annotations

from starlette.responses import JSONResponse


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": message}`` with ``status``; the message is one line (the CLI's wording for a user error)."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)
