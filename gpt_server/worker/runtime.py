"""Worker runtime: load the backend, register, heartbeat, admit, drain.

A worker reaches its controller through a link: HTTP for a worker process (or a worker
on another host), the registry itself for an ``in_process`` replica whose controller
runs in the same process (no HTTP round trip through its own event loop per heartbeat).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import uuid
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

import httpx
import psutil

from ..backends.base import Backend
from ..errors import BadRequestError, ConflictError, RateLimitError, ServiceUnavailableError
from ..protocol.worker import SECRET_HEADER, Heartbeat, HeartbeatReply, WorkerInfo
from ..settings import ConfigError
from ..transport.direct import HandoffServer
from ..transport.lane import LaneServer

if TYPE_CHECKING:
    from ..controller.registry import Registry

__all__ = [
    "WorkerRuntime", "ControllerLink", "ControllerUnreachable", "HttpControllerLink", "RegistryLink", "advertise_host", "process_memory",
]

log = logging.getLogger(__name__)

_MAX_NAMES = 64  # WorkerInfo.aliases' bound
_READINESS_POLL = 0.25  # seconds between readiness checks inside a heartbeat interval


def _descendants(pid: int) -> list[int]:
    """The process ids below ``pid``, from Linux's ``/proc/<pid>/task/<tid>/children``: reads only
    this process tree, where psutil's ``children()`` reads every process on the host (a heartbeat's
    cost then grows with the host's process count: 0.56 ms of CPU at 69 processes). Raises
    OSError where the kernel does not offer the file (``CONFIG_PROC_CHILDREN``) or ``pid``'s
    threads cannot be listed; a descendant or thread that ends meanwhile is skipped (its
    children then count from the next beat)."""
    if not os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        raise OSError(f"no /proc/{pid}/task/{pid}/children")
    out: list[int] = []
    seen = {pid}
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except (FileNotFoundError, ProcessLookupError):
            if p == pid:
                raise
            continue  # that descendant ended meanwhile
        for task in tasks:
            try:
                with open(f"/proc/{p}/task/{task}/children", "rb") as f:
                    kids = [int(k) for k in f.read().split()]
            except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
                continue
            for k in kids:
                if k not in seen:
                    seen.add(k)
                    out.append(k)
                    todo.append(k)
    return out


def process_memory(*, with_children: bool) -> int:
    """Resident bytes of this process, plus its child processes' (an engine server the worker
    runs) when ``with_children``; 0 when the system does not tell. A worker in the gateway's
    own process leaves the children out: they are the other workers."""
    try:
        me = psutil.Process()
        total: int = me.memory_info().rss
    except psutil.Error:
        return 0
    if with_children:
        try:
            pids = _descendants(me.pid)
        except (OSError, ValueError):  # not Linux, or no children file: psutil's way
            try:
                pids = [child.pid for child in me.children(recursive=True)]
            except psutil.Error:
                pids = []
        for pid in pids:
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                pass  # gone meanwhile
    return min(total, 2**50)


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
            host: str = s.getsockname()[0]
            return host
    except OSError:
        return socket.gethostbyname(socket.gethostname())


class ControllerLink(Protocol):
    """How a worker talks to its controller; failures raise ``ControllerUnreachable``."""

    async def register(self, info: WorkerInfo) -> None: ...

    async def heartbeat(self, hb: Heartbeat) -> bool:
        """False when the controller does not know this worker (register again)."""
        ...

    async def unregister(self, worker_id: str) -> None: ...

    async def aclose(self) -> None: ...


class ControllerUnreachable(Exception):
    pass


class HttpControllerLink:
    """The controller's internal HTTP routes."""

    def __init__(self, address: str, secret: str | None, verify: ssl.SSLContext | bool = True) -> None:
        headers = {SECRET_HEADER: secret} if secret else {}
        self.address = address.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.address, headers=headers, timeout=5.0, verify=verify)

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            resp = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ControllerUnreachable(type(exc).__name__) from exc
        if resp.status_code != 200:
            raise ControllerUnreachable(f"HTTP {resp.status_code} on {path}")
        return resp

    async def register(self, info: WorkerInfo) -> None:
        await self._post("/controller/register", info.model_dump())

    async def heartbeat(self, hb: Heartbeat) -> bool:
        resp = await self._post("/controller/heartbeat", hb.model_dump())
        try:
            return HeartbeatReply.model_validate(resp.json()).known
        except ValueError as exc:
            raise ControllerUnreachable("malformed heartbeat reply") from exc

    async def unregister(self, worker_id: str) -> None:
        await self._post("/controller/unregister", {"worker_id": worker_id})

    async def aclose(self) -> None:
        await self._client.aclose()


class RegistryLink:
    """The controller's registry in this process (an ``in_process`` replica under ``serve``)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def register(self, info: WorkerInfo) -> None:
        self.registry.register(info)

    async def heartbeat(self, hb: Heartbeat) -> bool:
        return self.registry.heartbeat(hb)

    async def unregister(self, worker_id: str) -> None:
        self.registry.unregister(worker_id)

    async def aclose(self) -> None:
        return None


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
        controller: ControllerLink | None = None,
        verify: ssl.SSLContext | bool = True,
        default: bool = False,
        engine: str = "",
        worker_id: str | None = None,
    ) -> None:
        """``controller``: how to reach the controller; HTTP to ``controller_address`` when None
        (an https:// one verified with ``verify``); ``default``: the model a request without a name
        gets (``default: true`` in the config); ``engine``: its work_mode (the dashboard shows it)."""
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
        self.default = default
        self.engine = engine[:64]
        # the launcher names its replicas (``worker_id``) to follow them in the registry
        self.worker_id = (worker_id or f"{model_name}-{replica}-{uuid.uuid4().hex[:8]}")[:200]
        self.state = "loading"
        self.inflight = 0
        self.requests_total = 0
        self.tokens_total = 0  # completion tokens generated (dashboard rates)
        self.deltas_direct_total = 0  # deltas taken on the engine's thread: handed streams, whole answers (protocol.deltas)
        self.handed_before_first_total = 0  # streams whose connection came before their first token (transport.direct)
        self.last_error: str | None = None
        # streams written to the client's connection (transport.direct): set by a worker process
        self.handoff: HandoffServer | None = None
        # JSON calls over a Unix socket from a gateway on this host (transport.lane): set by a worker process
        self.lane: LaneServer | None = None
        self.lane_calls_total = 0
        self.lane_early_total = 0  # of those, answered from the engine's thread (backends.base.ANSWER_SINK)
        self.lane_streams_total = 0  # chats and completions sent over the invoke socket
        # why the model cannot load because of its config (the worker then exits with CONFIG_ERROR_EXIT)
        self.config_error: ConfigError | None = None
        self._link: ControllerLink | None = controller
        self._verify = verify
        self._task: asyncio.Task[None] | None = None
        self._registered = False

    # ---- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        log.info("loading %s (%s)", self.model_name, type(self.backend).__name__)
        try:
            await asyncio.to_thread(self.backend.load)
        except ConfigError as exc:
            self.config_error = exc
            raise
        if self.state == "draining":  # stopped while loading: never offered
            return
        self.state = "ready"
        log.info("%s ready: capacity %d, context %s", self.model_name, self.backend.capacity, self.backend.context_length)
        if self._link is None and self.controller_address:
            self._link = HttpControllerLink(self.controller_address, self.secret, self._verify)
        if self._link is not None:
            self._task = asyncio.create_task(self._heartbeat_loop())

    async def drain(self) -> None:
        """Stop taking work: "draining" on /worker/health and in heartbeats, and off the
        controller's list, while the requests in flight go on."""
        if self.state == "draining":
            return
        self.state = "draining"
        if self.lane is not None:
            self.lane.stop_accepting()
        if self._link is not None:
            try:
                await self._link.unregister(self.worker_id)
            except ControllerUnreachable:
                pass
            self._registered = False

    async def stop(self, drain_timeout: float = 10.0) -> None:
        await self.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        while self.inflight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.lane is not None:  # calls over the socket (uvicorn has cut its HTTP requests): cut, and let them stop
            await self.lane.end_calls()
            deadline = loop.time() + 2.0
            while self.inflight and loop.time() < deadline:
                await asyncio.sleep(0.05)
        if self._task is not None:
            self._task.cancel()
        if self._link is not None:
            await self._link.aclose()
        await asyncio.to_thread(self.backend.close)

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            worker_id=self.worker_id,
            address=self.address,
            model_name=self.model_name,
            aliases=self.aliases,
            adapters=[a for a in getattr(self.backend, "extra_model_names", []) if a in self.aliases],
            model_kind=self.model_kind,
            engine=self.engine,
            capabilities=sorted(self.backend.capabilities),
            capacity=self.backend.capacity,
            context_length=self.backend.context_length,
            heartbeat_interval=self.heartbeat_interval,
            pid=os.getpid(),
            replica=self.replica,
            default=self.default,
            fingerprint=self.backend.fingerprint(),
            stream_socket=self.handoff.path if self.handoff is not None else "",
            invoke_socket=self.lane.path if self.lane is not None else "",
        )

    def ready(self) -> bool:
        return self.state == "ready" and self.backend.healthy()

    # ---- LoRA adapters at run time ------------------------------------------------------
    async def change_adapter(self, op: str, name: str, path: str | None) -> list[str]:
        """Load (``path``) or unload an adapter on the engine, then register again so the
        controller routes ``name`` here (or no longer does); the adapters served now."""
        if op == "load":
            if path is None:
                raise BadRequestError("'path' is required to load an adapter", param="path")
            if name == self.model_name or name in self.aliases:
                raise ConflictError(f"'{name}' is already a model id of this worker", param="name", code="adapter_exists")
            if len(self.aliases) >= _MAX_NAMES:
                raise BadRequestError(f"a worker serves at most {_MAX_NAMES} model ids (aliases and adapters)", param="name")
            await self.backend.load_adapter(name, path)
            self.aliases.append(name)
        else:
            await self.backend.unload_adapter(name)
            if name in self.aliases:
                self.aliases.remove(name)
        if self._link is not None and self._registered:
            try:
                await self._register()
            except ControllerUnreachable as exc:  # the heartbeat loop registers again
                log.warning("registering the adapter change failed (%s); will register again", exc)
                self._registered = False
        return list(self.info().adapters)

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
        assert self._link is not None
        await self._link.register(self.info())
        self._registered = True
        where = self.controller_address or "in this process"
        log.info("registered with controller %s as %s (%s)", where, self.worker_id, self.address)

    async def _heartbeat_loop(self) -> None:
        link = self._link
        assert link is not None
        while True:
            try:
                if not self._registered:
                    if self.state != "draining":  # a worker on its way out is not offered again
                        await self._register()
                else:
                    rss = await asyncio.to_thread(process_memory, with_children=not self.address.startswith("inproc://"))
                    hb = Heartbeat(
                        worker_id=self.worker_id,
                        queue_length=self.inflight,
                        healthy=self.ready(),
                        requests_total=self.requests_total,
                        tokens_total=self.tokens_total,
                        rss_bytes=rss,
                        last_error=self.last_error[:500] if self.last_error else None,
                        state=self.state if self.backend.healthy() else "unhealthy",
                    )
                    if not await link.heartbeat(hb) and self.state != "draining":
                        log.warning("controller forgot this worker; registering again")
                        await self._register()
            except ControllerUnreachable as exc:
                if self._registered:
                    log.warning("controller unreachable (%s); will register again", exc)
                self._registered = False
            except Exception:  # the heartbeat must outlive any one failure
                log.exception("heartbeat failed; will register again")
                self._registered = False
            await self._until_next_beat(self.heartbeat_interval if self._registered else min(1.0, self.heartbeat_interval))

    async def _until_next_beat(self, interval: float) -> None:
        """Sleep ``interval``, or less when readiness flips (an engine restarted inside this worker
        came back, or went down): the controller then learns of it at once, not a beat later."""
        was = self._beat_state()
        loop = asyncio.get_running_loop()
        end = loop.time() + interval
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(_READINESS_POLL, left))
            if self._beat_state() != was:
                return

    def _beat_state(self) -> tuple[str, bool]:
        """What a heartbeat's ``healthy`` and ``state`` are made of."""
        return self.state, self.backend.healthy()
