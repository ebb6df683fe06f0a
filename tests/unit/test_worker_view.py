"""One WorkerView on both sides: the controller lists it, a remote gateway parses it, the
dashboard reads it — and the JSON keeps the keys its clients read."""

from __future__ import annotations

import asyncio

import httpx
from fastapi.testclient import TestClient

from gpt_server.config import parse_config
from gpt_server.controller.app import build_controller_app
from gpt_server.controller.client import LocalController, RemoteController
from gpt_server.controller.dispatch import make_policy
from gpt_server.controller.registry import Registry
from gpt_server.gateway.app import build_app
from gpt_server.protocol.worker import Heartbeat, WorkerInfo, WorkerView

# what GET /controller/workers and the workers of /v1/dashboard have always carried
KEYS = {
    "protocol_version", "worker_id", "address", "model_name", "aliases", "model_kind", "capabilities", "capacity",
    "context_length", "heartbeat_interval", "pid", "replica", "default", "fingerprint", "queue_length", "active", "healthy", "dispatched_total",
    "gateway_inflight", "failures", "requests_total", "tokens_total", "last_error", "state",
    "engine", "rss_bytes",  # protocol 3: the dashboard's engine and memory columns
    "adapters",  # protocol 4: the aliases that are LoRA adapters (their /v1/models parent)
    "stream_socket",  # the worker's hand-off socket (transport.direct)
    "invoke_socket",  # protocol 7: the worker's socket for JSON calls (transport.lane; 8: chats too)
}


def _registry() -> Registry:
    reg = Registry(make_policy("shortest_queue"))
    reg.register(WorkerInfo(worker_id="w0", address="http://10.0.0.5:9000", model_name="m", aliases=["a"],
                            capabilities=["chat"], capacity=4, pid=42, engine="llama_cpp", context_length=2048))
    reg.heartbeat(Heartbeat(worker_id="w0", queue_length=3, requests_total=7, tokens_total=90, last_error="boom",
                            state="draining", rss_bytes=300 << 20))
    reg.dispatch("m")
    return reg


def test_controller_lists_the_same_keys_and_active_repeats_the_queue() -> None:
    with TestClient(build_controller_app(_registry(), run_expiry=False)) as c:
        (w,) = c.get("/controller/workers").json()
    assert set(w) == KEYS
    assert w["queue_length"] == w["active"] == 3 and w["dispatched_total"] == 1
    assert (w["requests_total"], w["tokens_total"], w["last_error"], w["state"]) == (7, 90, "boom", "draining")
    assert (w["engine"], w["rss_bytes"]) == ("llama_cpp", 300 << 20)


def test_remote_gateway_parses_what_the_controller_lists() -> None:
    with TestClient(build_controller_app(_registry(), run_expiry=False)) as c:
        listed = c.get("/controller/workers").json()
    listed[0]["added_by_a_newer_controller"] = True  # ignored, not an error

    async def main() -> list[WorkerView]:
        rc = RemoteController("http://ctrl:1")
        await rc.client.aclose()
        rc.client = httpx.AsyncClient(
            base_url="http://ctrl:1", transport=httpx.MockTransport(lambda r: httpx.Response(200, json=listed))
        )
        try:
            return await rc.workers()
        finally:
            await rc.aclose()

    (v,) = asyncio.run(main())
    assert isinstance(v, WorkerView)
    assert (v.worker_id, v.address, v.pid, v.aliases, v.capacity) == ("w0", "http://10.0.0.5:9000", 42, ["a"], 4)
    assert (v.queue_length, v.requests_total, v.tokens_total, v.last_error, v.state) == (3, 7, 90, "boom", "draining")
    assert (v.engine, v.rss_bytes) == ("llama_cpp", 300 << 20)
    assert v.gateway_inflight == 0  # this gateway's own requests, not the controller's figure


def test_dashboard_workers_keep_their_keys() -> None:
    # no keys at all and a loopback bind (the defaults): the admin view is open, in full
    cfg = parse_config({"models": []})
    with TestClient(build_app(cfg, LocalController(_registry())), base_url="http://localhost") as c:
        d = c.get("/admin/dashboard").json()
        client = c.get("/v1/dashboard").json()
    (w,) = d["workers"]
    assert set(w) == KEYS and w["state"] == "draining" and w["active"] == 3
    (m,) = d["models"]
    assert (m["name"], m["state"], m["queue_length"], m["tokens_total"]) == ("m", "draining", 3, 90)
    # a model only a worker tells of: its kind as people say it, engine, context and memory from the worker
    assert (m["kind"], m["kind_label"], m["work_mode"], m["context_length"], m["memory_bytes"]) == ("auto", "chat", "llama_cpp", 2048, 300 << 20)
    assert (m["ready_workers"], m["live_workers"]) == (0, 1)
    (cw,) = client["workers"]  # the client view: no address, pid or raw error
    assert not {"address", "pid", "last_error", "stream_socket", "invoke_socket"} & set(cw) and cw["has_error"] is True and cw["active"] == 3
    assert client["models"] == d["models"] and client["history"] == d["history"]


def test_admin_view_is_refused_without_admin_keys_unless_local_and_keyless() -> None:
    reg = _registry()
    for serve_args, status in (
        ({"api_keys": ["k"]}, 403),  # keys for clients, none for admins: off
        ({"host": "0.0.0.0"}, 403),  # reachable from elsewhere: off
        ({"host": "::1"}, 200),
    ):
        cfg = parse_config({"models": [], "serve_args": serve_args})
        with TestClient(build_app(cfg, LocalController(reg)), base_url="http://localhost") as c:
            r = c.get("/admin/dashboard", headers={"Authorization": "Bearer k"})
        assert r.status_code == status, (serve_args, r.text)
        if status == 403:
            assert r.json()["error"]["code"] == "admin_disabled"


def test_blank_admin_keys_are_refused() -> None:
    import pytest

    from gpt_server.config import ConfigError

    with pytest.raises(ConfigError, match="serve_args.admin_keys: a key is empty or blank"):
        parse_config({"models": [], "serve_args": {"admin_keys": ["ok", " "]}})


class _FlakyEngine:
    """A backend whose engine goes down and comes back (an engine process restarted by its worker)."""

    capabilities = frozenset({"chat"})
    capacity = 1
    context_length = 2048
    extra_model_names: list[str] = []

    def __init__(self) -> None:
        self.up = True

    def healthy(self) -> bool:
        return self.up

    def load(self) -> None:
        pass

    def close(self) -> None:
        pass

    def fingerprint(self) -> str:
        return "fp_test"


class _Beats:
    def __init__(self) -> None:
        self.beats: list[Heartbeat] = []

    async def register(self, info: WorkerInfo) -> None:
        pass

    async def heartbeat(self, hb: Heartbeat) -> bool:
        self.beats.append(hb)
        return True

    async def unregister(self, worker_id: str) -> None:
        pass

    async def aclose(self) -> None:
        pass


def test_a_readiness_change_is_reported_at_once_not_a_heartbeat_later() -> None:
    """With a 30 s heartbeat, the engine going down and coming back each reach the controller
    within a second (else the gateway answers 503 for a replica that is back, or routes to
    one that is down, for up to a whole interval)."""
    from gpt_server.worker.runtime import WorkerRuntime

    async def run() -> None:
        backend, link = _FlakyEngine(), _Beats()
        rt = WorkerRuntime(backend, model_name="m", aliases=[], model_kind="llm", address="http://127.0.0.1:1",  # type: ignore[arg-type]
                           controller_address=None, limit=4, heartbeat_interval=30.0, secret=None, controller=link)
        await rt.start()
        loop = asyncio.get_running_loop()

        async def beat_with(healthy: bool) -> float:
            t0 = loop.time()
            while not any(b.healthy is healthy for b in link.beats):
                assert loop.time() - t0 < 1.0, f"no heartbeat with healthy={healthy} within a second"
                await asyncio.sleep(0.02)
            return loop.time() - t0

        await asyncio.sleep(0.1)  # registered; the first beat comes at once
        link.beats.clear()
        backend.up = False
        await beat_with(False)
        link.beats.clear()
        backend.up = True
        await beat_with(True)
        await rt.stop(drain_timeout=0)

    asyncio.run(run())


def test_a_worker_process_freezes_its_loaded_heap_out_of_the_collectors_passes() -> None:
    """Once its model has loaded, a worker app's start-up freezes what is alive (``gc.freeze``):
    a full collection then skips the start-up heap instead of holding the GIL for all of it
    (measured in a worker under load: 58-66 ms → under 1 ms). A freshly made object is not
    frozen, so garbage made while serving is still collected."""
    import gc

    from gpt_server.worker.app import build_worker_app
    from gpt_server.worker.runtime import WorkerRuntime

    rt = WorkerRuntime(_FlakyEngine(), model_name="m", aliases=[], model_kind="llm", address="http://127.0.0.1:1",  # type: ignore[arg-type]
                       controller_address=None, limit=4, heartbeat_interval=30.0, secret=None, controller=_Beats())
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        with TestClient(build_worker_app(rt)) as c:
            assert c.get("/worker/health").json()["status"] == "ready"
            frozen = gc.get_freeze_count()
            assert frozen > 1000, f"only {frozen} objects frozen after the worker started"
            young = [[]]  # made after start-up: the collector still tracks it
            # (the count may fall: frozen objects are still freed by reference counting)
            assert gc.is_tracked(young) and gc.get_freeze_count() <= frozen
            cycle: list[object] = []
            cycle.append(cycle)
            gone = len(gc.garbage)
            del cycle
            assert gc.collect() >= 1 and len(gc.garbage) == gone  # cyclic garbage made while serving is freed
    finally:
        gc.unfreeze()
