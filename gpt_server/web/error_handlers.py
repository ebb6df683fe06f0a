"""OpenAI-format errors for every app: exceptions rendered as ``{"error": {...}}`` with their status."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import GatewayError, error_body
from .responses import FastJSONResponse, StreamAborted, error_response

__all__ = ["validation_message", "install_error_handlers"]

log = logging.getLogger("gpt_server")




def validation_message(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """First validation error → (message, param) in the OpenAI style."""
    if not errors:
        return "invalid request", None
    e = errors[0]
    loc = [str(p) for p in e.get("loc", ()) if p not in ("body",)]
    # drop pydantic's union-member markers such as 'str' or 'list[int]'
    loc = [p for p in loc if not any(ch in p for ch in "[]") and p not in ("str", "int", "float", "function-after")]
    param = ".".join(loc) or None
    msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
    if e.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if e.get("type") == "missing":
        return f"'{param}' is a required property", param
    return (f"{param}: {msg}" if param else msg), param


def install_error_handlers(app: Starlette) -> None:
    """OpenAI-format errors for a FastAPI or a plain Starlette app."""

    async def _gateway_error(request: Request, exc: GatewayError) -> FastJSONResponse:
        return error_response(exc)

    async def _validation_error(request: Request, exc: RequestValidationError) -> FastJSONResponse:
        message, param = validation_message(list(exc.errors()))
        return FastJSONResponse(error_body(message, "invalid_request_error", param, None), status_code=400)

    async def _http_error(request: Request, exc: StarletteHTTPException) -> FastJSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        etype = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return FastJSONResponse(
            error_body(str(exc.detail), etype, None, code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def _unexpected(request: Request, exc: Exception) -> FastJSONResponse:
        if not isinstance(exc, StreamAborted):  # logged where the stream was cut
            log.exception("unhandled error on %s %s", request.method, request.url.path)
        return FastJSONResponse(
            error_body("internal server error", "server_error", None, "internal_error"), status_code=500
        )

    app.add_exception_handler(GatewayError, _gateway_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
