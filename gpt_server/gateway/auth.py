"""Bearer API keys, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from ..errors import AuthenticationError

__all__ = ["api_key_guard"]


def api_key_guard(keys: list[str]):  # noqa: ANN201 - FastAPI dependency
    encoded = [k.encode() for k in keys]

    async def check(request: Request) -> None:
        if not encoded:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
            )
        given = token.strip().encode()
        ok = False
        for k in encoded:  # no early exit: time does not depend on which key matched
            ok |= hmac.compare_digest(given, k)
        if scheme.lower() != "bearer" or not ok:
            raise AuthenticationError("Incorrect API key provided.")

    return check
