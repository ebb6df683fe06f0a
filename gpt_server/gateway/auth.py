"""Bearer API keys and admin keys, compared in constant time."""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import Request

from ..errors import AuthenticationError, PermissionDeniedError

__all__ = ["api_key_guard", "admin_guard", "is_loopback"]


def _matches(given: bytes, keys: list[bytes]) -> bool:
    ok = False
    for k in keys:  # no early exit: time does not depend on which key matched
        ok |= hmac.compare_digest(given, k)
    return ok


def _bearer(request: Request) -> tuple[str, bytes] | None:
    header = request.headers.get("authorization", "")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return scheme.lower(), token.strip().encode()


def api_key_guard(keys: list[str]):  # noqa: ANN201 - FastAPI dependency
    """Bearer keys; on the Anthropic routes (``/v1/messages…``) also ``x-api-key: <key>``,
    which the anthropic SDK sends (``Authorization`` wins when both are there)."""
    encoded = [k.encode() for k in keys]

    async def check(request: Request) -> None:
        if not encoded:
            return
        given = _bearer(request)
        if given is None and request.url.path.startswith("/v1/messages"):
            x_key = request.headers.get("x-api-key")
            if x_key is not None:
                given = ("bearer", x_key.strip().encode())
        if given is None:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
            )
        scheme, token = given
        if not _matches(token, encoded) or scheme != "bearer":
            raise AuthenticationError("Incorrect API key provided.")

    return check


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def admin_guard(admin_keys: list[str], *, open_without_keys: bool):  # noqa: ANN201 - FastAPI dependency
    """The admin view's check: an admin key (401 without one, 403 with another key). With no
    admin keys configured the view is refused (403), unless ``open_without_keys`` (a loopback
    bind with no API keys: everything on it is open to local processes anyway)."""
    encoded = [k.encode() for k in admin_keys]

    async def check(request: Request) -> None:
        if not encoded:
            if open_without_keys:
                return
            raise PermissionDeniedError(
                "the admin view is off; set serve_args.admin_keys to enable it", code="admin_disabled"
            )
        given = _bearer(request)
        if given is None:
            raise AuthenticationError("this view needs an admin key. Send it as 'Authorization: Bearer <key>'.")
        scheme, token = given
        if not _matches(token, encoded) or scheme != "bearer":
            raise PermissionDeniedError("this view needs an admin key", code="admin_key_required")

    return check
