"""Gateway routing and error paths, with an in-process controller that has no workers."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gpt_server.config import parse_config
from gpt_server.controller.client import LocalController
from gpt_server.controller.dispatch import make_policy
from gpt_server.controller.registry import Registry
from gpt_server.gateway.app import build_app
from gpt_server.protocol.worker import WorkerInfo


@pytest.fixture()
def client() -> TestClient:
    cfg = parse_config({"serve_args": {"api_keys": "k1"}, "models": []})
    reg = Registry(make_policy("round_robin"))
    # a registered worker nobody listens for: dispatch succeeds, connection fails
    reg.register(WorkerInfo(worker_id="dead", address="http://127.0.0.1:9", model_name="m", capacity=1, capabilities=["chat", "completion"]))
    with TestClient(build_app(cfg, LocalController(reg)), base_url="http://localhost") as c:  # a loopback Host
        c.headers["Authorization"] = "Bearer k1"
        yield c


def _err(r) -> dict:  # noqa: ANN001
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_unreachable_worker_is_503_not_500(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503
    _err(r)


def test_unknown_route_and_method(client: TestClient) -> None:
    assert client.get("/v1/nothing").status_code == 404
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405
    _err(r)


def test_validation_is_400(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": -1})
    assert r.status_code == 400 and _err(r)["param"] == "max_tokens"
    r = client.post("/v1/completions", json={"model": "m", "prompt": []})
    assert r.status_code == 400
    r = client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user"}]})
    assert r.status_code == 400
    r = client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"abc": 1}})
    assert r.status_code == 400


def test_unsupported_features_are_clear_400(client: TestClient) -> None:
    msgs = [{"role": "user", "content": "x"}]
    r = client.post("/v1/chat/completions", json={"model": "m", "messages": msgs, "response_format": {"type": "json_schema"}})
    assert r.status_code == 400 and _err(r)["param"] == "response_format"


def test_auth_required(client: TestClient) -> None:
    r = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and _err(r)["code"] == "invalid_api_key"


def test_plain_routes_go_straight_to_the_gateways_middlewares_and_keep_what_they_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """``GatewayApp``: a POST to a plain route skips FastAPI's and Starlette's own layers, not
    ours: metrics count it, CORS answers its origin, the body limit holds, and a bug in an
    endpoint is a 500 in the OpenAI shape."""
    from gpt_server.gateway.fastlane import GatewayApp
    from gpt_server.gateway.routes import embeddings

    cfg = parse_config({"serve_args": {"api_keys": "k1", "cors_origins": ["http://ui.example"], "max_body_bytes": 4096}, "models": []})
    app = build_app(cfg, LocalController(Registry(make_policy("round_robin"))))
    assert isinstance(app, GatewayApp) and {"/v1/embeddings", "/v1/chat/completions"} <= app.fast_paths

    async def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(embeddings, "resolve_model", broken)
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as c:
        c.headers["Authorization"] = "Bearer k1"
        r = c.post("/v1/embeddings", json={"model": "m", "input": "x"})
        assert r.status_code == 500 and _err(r)["code"] == "internal_error" and "a bug" not in r.text
        r = c.post("/v1/embeddings", json={"model": "m", "input": "x" * 5000}, headers={"Origin": "http://ui.example"})
        assert r.status_code == 413
        _err(r)
        assert r.headers["access-control-allow-origin"] == "http://ui.example"
        assert _fast_stack_built(app)
        metrics = c.get("/metrics").text
    assert 'gpt_server_http_requests_total{route="/v1/embeddings",status="500"} 1.0' in metrics
    assert 'gpt_server_http_requests_total{route="unmatched",status="413"} 1.0' in metrics  # refused before routing, as ever


def _fast_stack_built(app: object) -> bool:
    return getattr(app, "_fast_stack", None) is not None
