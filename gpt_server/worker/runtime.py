"""Worker runtime: load the backend, register, heartbeat, admit, drain."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from urllib.parse import urlparse

import httpx

from ..backends.base import Backend
from ..errors import RateLimitError, ServiceUnavailableError
from ..protocol.worker import SECRET_HEADER, Heartbeat, HeartbeatReply, WorkerInfo

__all__ = ["WorkerRuntime", "advertise_host"]

log = logging.getLogger(__name__)


def advertise_host(bind_host: str, controller_address: str | None, configured: str | None) -> str:
    """An address other hosts can reach: never 0.0.0.0 / ::."""
    if configured:
        return configured
    if bind_host not in ("0.0.0.0", "::", ""):
        return bind_host
    target = urlparse(controller_address).hostname if controller_address else None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((target or "10.255.255.255", 9))
            return s.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


class WorkerRuntime:
    def __init__(
        self,
        backend: Backend,
        *,
        model_name: str,
        aliases: list[str],
        model_kind: str,
        address: str,
        controller_address: str | None,
        limit: int,
        heartbeat_interval: float,
        secret: str | None,
        replica: int = 0,
    ) -> None:
        self.backend = backend
        self.model_name = model_name
        self.aliases = aliases
        self.model_kind = model_kind
        self.address = address
        self.controller_address = controller_address.rstrip("/") if controller_address else None
        self.limit = limit
        self.heartbeat_interval = heartbeat_interval
        self.secret = secret
        self.replica = replica
        self.worker_id = f"{model_name}-{replica}-{uuid.uuid4().hex[:8]}"
        self.state = "loading"
        self.inflight = 0
        self.requests_total = 0
        self.tokens_total = 0  # completion tokens generated (dashboard rates)
        self.last_error: str | None = None
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._registered = False

    # ---- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        log.info("loading %s (%s)", self.model_name, type(self.backend).__name__)
        await asyncio.to_thread(self.backend.load)
        self.state = "ready"
        log.info("%s ready: capacity %d, context %s", self.model_name, self.backend.capacity, self.backend.context_length)
        if self.controller_address:
            headers = {SECRET_HEADER: self.secret} if self.secret else {}
            self._client = httpx.AsyncClient(base_url=self.controller_address, headers=headers, timeout=5.0)
            self._task = asyncio.create_task(self._heartbeat_loop())

    async def stop(self, drain_timeout: float = 10.0) -> None:
        self.state = "draining"
        if self._client is not None:
            try:
                await self._client.post("/controller/unregister", json={"worker_id": self.worker_id})
            except httpx.HTTPError:
                pass
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        while self.inflight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._task is not None:
            self._task.cancel()
        if self._client is not None:
            await self._client.aclose()
        await asyncio.to_thread(self.backend.close)

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            worker_id=self.worker_id,
            address=self.address,
            model_name=self.model_name,
            aliases=self.aliases,
            model_kind=self.model_kind,
            capabilities=sorted(self.backend.capabilities),
            capacity=self.backend.capacity,
            context_length=self.backend.context_length,
            heartbeat_interval=self.heartbeat_interval,
            pid=os.getpid(),
            replica=self.replica,
        )

    def ready(self) -> bool:
        return self.state == "ready" and self.backend.healthy()

    # ---- admission ----------------------------------------------------------------
    def admit(self) -> None:
        if not self.ready():
            raise ServiceUnavailableError(f"worker is {self.state}")
        if self.inflight >= self.limit:
            raise RateLimitError(
                f"worker for '{self.model_name}' is at its limit of {self.limit} requests; retry later",
                retry_after=1,
            )
        self.inflight += 1
        self.requests_total += 1

    def release(self) -> None:
        self.inflight -= 1

    # ---- controller ---------------------------------------------------------------
    async def _register(self) -> None:
        assert self._client is not None
        resp = await self._client.post("/controller/register", json=self.info().model_dump())
        resp.raise_for_status()
        self._registered = True
        log.info("registered with controller %s as %s (%s)", self.controller_address, self.worker_id, self.address)

    async def _heartbeat_loop(self) -> None:
        assert self._client is not None
        while True:
            try:
                if not self._registered:
                    await self._register()
                else:
                    hb = Heartbeat(
                        worker_id=self.worker_id,
                        queue_length=self.inflight,
                        active=self.inflight,
                        healthy=self.ready(),
                        requests_total=self.requests_total,
                        tokens_total=self.tokens_total,
                        last_error=self.last_error[:500] if self.last_error else None,
                        state=self.state if self.backend.healthy() else "unhealthy",
                    )
                    resp = await self._client.post("/controller/heartbeat", json=hb.model_dump())
                    if resp.status_code == 200 and not HeartbeatReply.model_validate(resp.json()).known:
                        log.warning("controller forgot this worker; registering again")
                        await self._register()
                    elif resp.status_code != 200:
                        self._registered = False
            except (httpx.HTTPError, ValueError) as exc:
                if self._registered:
                    log.warning("controller unreachable (%s); will register again", type(exc).__name__)
                self._registered = False
            await asyncio.sleep(self.heartbeat_interval if self._registered else min(1.0, self.heartbeat_interval))
