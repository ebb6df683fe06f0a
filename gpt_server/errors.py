"""One error hierarchy, one renderer (OpenAI error format) for JSON and SSE."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = [
    "GatewayError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "PayloadTooLargeError",
    "UnsupportedMediaTypeError",
    "RateLimitError",
    "InternalError",
    "ServiceUnavailableError",
    "UpstreamError",
    "TimeoutError_",
    "error_body",
    "error_from_body",
]


class GatewayError(Exception):
    """Base of every error the server renders to a client."""

    status: int = 500
    openai_type: str = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.openai_type, self.param, self.code)

    def to_json(self) -> bytes:
        return orjson.dumps(self.body())


class BadRequestError(GatewayError):
    status = 400
    openai_type = "invalid_request_error"


class AuthenticationError(GatewayError):
    status = 401
    openai_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    status = 403
    openai_type = "invalid_request_error"
    default_code = "permission_denied"


class NotFoundError(GatewayError):
    status = 404
    openai_type = "invalid_request_error"
    default_code = "model_not_found"


class ConflictError(GatewayError):
    status = 409
    openai_type = "invalid_request_error"
    default_code = "conflict"


class PayloadTooLargeError(GatewayError):
    status = 413
    openai_type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaTypeError(GatewayError):
    status = 415
    openai_type = "invalid_request_error"
    default_code = "unsupported_media_type"


class RateLimitError(GatewayError):
    status = 429
    openai_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int = 1, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("Retry-After", str(retry_after))


class InternalError(GatewayError):
    status = 500
    openai_type = "server_error"


class UpstreamError(GatewayError):
    status = 502
    openai_type = "server_error"
    default_code = "upstream_error"


class ServiceUnavailableError(GatewayError):
    status = 503
    openai_type = "server_error"
    default_code = "service_unavailable"


class TimeoutError_(GatewayError):
    status = 504
    openai_type = "timeout_error"
    default_code = "timeout"


_BY_STATUS: dict[int, type[GatewayError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    429: RateLimitError,
    500: InternalError,
    502: UpstreamError,
    503: ServiceUnavailableError,
    504: TimeoutError_,
}


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_from_body(status: int, body: Any) -> GatewayError:
    """Rebuild a GatewayError from an OpenAI-format error body (e.g. from a worker)."""
    cls = _BY_STATUS.get(status, UpstreamError if status >= 500 else BadRequestError)
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return cls(f"upstream answered HTTP {status}")
    message = str(err.get("message") or f"upstream answered HTTP {status}")
    exc = cls(message, param=err.get("param"), code=err.get("code"))
    exc.status = status
    return exc
