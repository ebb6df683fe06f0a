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

__all__ = ["validation_message", "install_error_handlers", "anthropic_error", "ANTHROPIC_PATHS", "gateway_error_response"]

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


# the Anthropic Messages routes answer errors in Anthropic's shape (the anthropic SDK reads
# ``error.type`` and ``error.message``); HTTP status → Anthropic's error type
ANTHROPIC_PATHS = ("/v1/messages",)
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body: ``{"type": "error", "error": {"type", "message"}}``."""
    etype = _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": etype, "message": message}}


def _reshaped(request: Request, response: FastJSONResponse, message: str) -> FastJSONResponse:
    """``response`` in Anthropic's shape on the Anthropic routes, else as it is."""
    if not request.url.path.startswith(ANTHROPIC_PATHS):
        return response
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
    return FastJSONResponse(anthropic_error(response.status_code, message), status_code=response.status_code, headers=headers or None)


def gateway_error_response(request: Request, exc: GatewayError) -> FastJSONResponse:
    """The response for ``exc``: OpenAI's shape, Anthropic's on the Anthropic routes."""
    return _reshaped(request, error_response(exc), str(exc))


def install_error_handlers(app: Starlette) -> None:
    """OpenAI-format errors for a FastAPI or a plain Starlette app (Anthropic's on its routes)."""

    async def _gateway_error(request: Request, exc: GatewayError) -> FastJSONResponse:
        return gateway_error_response(request, exc)

    async def _validation_error(request: Request, exc: RequestValidationError) -> FastJSONResponse:
        message, param = validation_message(list(exc.errors()))
        return _reshaped(request, FastJSONResponse(error_body(message, "invalid_request_error", param, None), status_code=400), message)

    async def _http_error(request: Request, exc: StarletteHTTPException) -> FastJSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        etype = "invalid_request_error" if exc.status_code < 500 else "server_error"
        response = FastJSONResponse(
            error_body(str(exc.detail), etype, None, code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )
        return _reshaped(request, response, str(exc.detail))

    async def _unexpected(request: Request, exc: Exception) -> FastJSONResponse:
        if not isinstance(exc, StreamAborted):  # logged where the stream was cut
            log.exception("unhandled error on %s %s", request.method, request.url.path)
        response = FastJSONResponse(
            error_body("internal server error", "server_error", None, "internal_error"), status_code=500
        )
        return _reshaped(request, response, "internal server error")

    app.add_exception_handler(GatewayError, _gateway_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
