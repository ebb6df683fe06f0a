"""The HTTP connection pool of an engine that talks to a server (a relayed engine, Triton)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

__all__ = ["LoopBoundClient"]


class LoopBoundClient:
    """An ``httpx.AsyncClient`` made on first use in the running event loop (again if the loop
    changed), closable from any thread (the worker calls ``backend.close`` in a thread)."""

    def __init__(self, base_url: str, timeout: httpx.Timeout, headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url
        self._kw: dict[str, Any] = {
            "base_url": base_url, "timeout": timeout, "headers": headers or {},
            "limits": httpx.Limits(max_connections=1024, max_keepalive_connections=64),
        }
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = httpx.AsyncClient(**self._kw)
            self._loop = loop
        return self._client

    def fresh(self) -> httpx.AsyncClient:
        """A client of its own (new connections), for ``async with``."""
        return httpx.AsyncClient(**{k: v for k, v in self._kw.items() if k != "limits"})

    def close(self) -> None:
        client, loop = self._client, self._loop
        self._client = None
        if client is None or loop is None or loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(5)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass
