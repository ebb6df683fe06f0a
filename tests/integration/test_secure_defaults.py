"""Secure by default (issue 19): what clients learn about the deployment, and what a
structured-output request may cost.

One real server: the packaged SmolLM2 (llama.cpp) with a short grammar compile budget, and a
relay model whose remote upstream is a closed port on 127.0.0.1. API key and admin key differ.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from gpt_server.procs import free_port
from tests.helpers import Server, base_config, served, smollm_entry

KEY = "client-key"
ADMIN = "admin-key"
MSG = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    closed = free_port()  # nothing listens there
    relay = {"remote": {"model_config": {"model_name_or_path": "up", "api_base": f"http://127.0.0.1:{closed}/v1"},
                        "work_mode": "openai", "workers": [{"gpus": []}]}}
    cfg = base_config(api_keys=KEY, models=[smollm_entry(n_ctx=512, grammar_compile_timeout=0.5), relay])
    cfg["serve_args"]["admin_keys"] = [ADMIN]
    with served(cfg, tmp_path_factory.mktemp("secure"), "secure_defaults") as srv:
        srv.closed_port = closed  # type: ignore[attr-defined]
        yield srv


def _client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=120)


# ---- item 7: internal details ------------------------------------------------------------
def test_unreachable_upstream_names_no_address(server: Server) -> None:
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as ei:
            r = _client(server).chat.completions.create(model="remote", messages=MSG, max_tokens=4, stream=stream)
            if stream:
                list(r)  # type: ignore[arg-type]
        text = str(ei.value.body) + ei.value.message
        assert ei.value.status_code == 503, text
        assert "unreachable" in text
        for leak in ("127.0.0.1", str(server.closed_port), "http://", "/v1"):  # type: ignore[attr-defined]
            assert leak not in text, (leak, text)
    # the operator still has it, in the log
    assert f"127.0.0.1:{server.closed_port}" in server.proc.log_text()  # type: ignore[attr-defined]


def test_client_dashboard_is_model_level(server: Server) -> None:
    r = httpx.get(f"{server.base_url}/v1/dashboard", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert r.status_code == 200
    d = r.json()
    assert d["view"] == "client"
    assert {m["name"]: m["state"] for m in d["models"]} == {"smollm2": "ready", "remote": "ready"}
    text = r.text
    for leak in ("127.0.0.1", "http://", '"address"', '"pid"', '"last_error"'):
        assert leak not in text, leak
    assert all({"worker_id", "state", "queue_length", "has_error"} <= set(w) for w in d["workers"])


def test_admin_dashboard_needs_the_admin_key(server: Server) -> None:
    url = f"{server.base_url}/admin/dashboard"
    assert httpx.get(url, timeout=10).status_code == 401
    plain = httpx.get(url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert plain.status_code == 403 and plain.json()["error"]["code"] == "admin_key_required"
    r = httpx.get(url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert r.status_code == 200
    d = r.json()
    assert d["view"] == "admin"
    for w in d["workers"]:
        assert w["address"].startswith("http://127.0.0.1:") and w["pid"] > 0 and "last_error" in w
    # the admin key is not an API key
    assert httpx.get(f"{server.base_url}/v1/dashboard", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10).status_code == 401


# ---- item 6: structured output bounds ------------------------------------------------------
def _schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def test_oversized_schema_is_400_with_param(server: Server) -> None:
    big = {"type": "object", "properties": {f"field_{i:05d}": {"type": "integer"} for i in range(4000)}}  # ~100 KB
    with pytest.raises(openai.BadRequestError) as ei:
        _client(server).chat.completions.create(model="smollm2", messages=MSG, max_tokens=4, response_format=_schema_format(big))  # type: ignore[arg-type]
    err = ei.value.body  # type: ignore[index]
    assert err["param"] == "response_format" and err["code"] == "grammar_too_large", err
    with pytest.raises(openai.BadRequestError) as ei:
        _client(server).chat.completions.create(
            model="smollm2", messages=MSG, max_tokens=4, extra_body={"guided_regex": "a" * 70_000}
        )
    assert ei.value.body["param"] == "guided_regex"  # type: ignore[index]


def test_deep_schema_is_400(server: Server) -> None:
    node: dict = {"type": "string"}
    for _ in range(80):  # 300 levels compiled for 9 s; the JSON parser itself stops near 200
        node = {"type": "object", "properties": {"a": node}, "required": ["a"]}
    t0 = time.monotonic()
    with pytest.raises(openai.BadRequestError) as ei:
        _client(server).chat.completions.create(model="smollm2", messages=MSG, max_tokens=4, response_format=_schema_format(node))  # type: ignore[arg-type]
    assert ei.value.body["code"] == "grammar_too_complex"  # type: ignore[index]
    assert time.monotonic() - t0 < 5


def test_costly_grammar_is_refused_within_the_budget_and_plain_ones_still_work(server: Server) -> None:
    client = _client(server)
    t0 = time.monotonic()
    # two long-string fields: ~7 s of xgrammar compile here (a plain object: ~10 ms)
    costly = {"type": "object", "properties": {f"k{i}": {"type": "string", "maxLength": 100000 + i} for i in range(2)}}
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="smollm2", messages=MSG, max_tokens=4, response_format=_schema_format(costly))  # type: ignore[arg-type]
    took = time.monotonic() - t0
    err = ei.value.body  # type: ignore[index]
    assert err["code"] == "grammar_too_complex" and err["param"] == "response_format", err
    assert took < 4, took  # the 0.5 s budget, not the whole compile
    # a small schema compiles and constrains as before (possibly after a busy 503 while the
    # refused compile finishes in the background)
    deadline = time.monotonic() + 120
    while True:
        try:
            r = client.chat.completions.create(
                model="smollm2", messages=MSG, max_tokens=20,
                response_format=_schema_format({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}),  # type: ignore[arg-type]
            )
            break
        except openai.InternalServerError as exc:
            assert exc.status_code == 503 and time.monotonic() < deadline, exc
            time.sleep(0.5)
    assert r.choices[0].message.content and r.choices[0].message.content.startswith('{"a":')
