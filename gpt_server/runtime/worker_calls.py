"""How the model manager calls a worker's internal routes (a LoRA adapter loaded at run time):
HTTP with the internal secret (https:// verified with the internal TLS context), or the
in-process transport for ``inproc://`` workers."""

from __future__ import annotations

import ssl
from typing import Any

import httpx
import orjson

from ..errors import ServiceUnavailableError, UpstreamError, error_from_body
from ..protocol.worker import SECRET_HEADER
from ..transport.inproc import InProcessTransport, is_local

__all__ = ["WorkerCaller"]


class WorkerCaller:
    """``await caller.post(address, path, body)``: the worker's JSON answer, or its error raised."""

    def __init__(
        self, secret: str | None, *, local: InProcessTransport | None = None, verify: ssl.SSLContext | bool = True,
        timeout: float = 300.0,
    ) -> None:
        self._headers = {SECRET_HEADER: secret} if secret else {}
        self._local = local
        self._verify = verify
        self._timeout = timeout

    async def post(self, address: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        raw = orjson.dumps(body)
        if is_local(address):
            if self._local is None or not self._local.serves(address):
                raise ServiceUnavailableError("the replica is not running", code="replica_unreachable")
            resp = await self._local.post(address, path, raw, self._headers, read_timeout=self._timeout)
            status, content = resp.status, await resp.read()
            resp.close()
        else:
            try:
                async with httpx.AsyncClient(verify=self._verify, timeout=self._timeout) as client:
                    r = await client.post(
                        f"{address}{path}", content=raw, headers={**self._headers, "content-type": "application/json"}
                    )
            except httpx.HTTPError as exc:
                raise ServiceUnavailableError(
                    f"the replica did not answer ({type(exc).__name__})", code="replica_unreachable"
                ) from None
            status, content = r.status_code, r.content
        try:
            data = orjson.loads(content) if content else None
        except orjson.JSONDecodeError:
            data = None
        if status != 200:
            raise error_from_body(status, data)
        if not isinstance(data, dict):
            raise UpstreamError("the worker answered something that is not a JSON object")
        return data
