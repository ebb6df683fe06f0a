"""The controller refuses a worker of another internal protocol version, with an error that says so."""

from __future__ import annotations

from fastapi.testclient import TestClient

from gpt_server.controller.app import build_controller_app
from gpt_server.controller.dispatch import make_policy
from gpt_server.controller.registry import Registry
from gpt_server.protocol.worker import PROTOCOL_VERSION, WorkerInfo


def _info(**kw: object) -> dict:
    base = WorkerInfo(worker_id="w1", address="http://127.0.0.1:1", model_name="m", capacity=1).model_dump()
    return {**base, **kw}


def test_register_checks_the_protocol_version() -> None:
    registry = Registry(make_policy("shortest_queue"))
    with TestClient(build_controller_app(registry, run_expiry=False)) as client:
        old = client.post("/controller/register", json={**_info(protocol_version=PROTOCOL_VERSION - 1), "active": 0})
        assert old.status_code == 409
        err = old.json()["error"]
        assert err["code"] == "protocol_version_mismatch" and err["param"] == "protocol_version"
        assert f"version {PROTOCOL_VERSION - 1}" in err["message"] and "same gpt-server release" in err["message"]
        assert not registry.workers
        bad = client.post("/controller/register", json=_info(capacity=0))
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "capacity"
        ok = client.post("/controller/register", json=_info())
        assert ok.status_code == 200 and "w1" in registry.workers
        assert client.post("/controller/register", content=b"{nope").status_code == 400
