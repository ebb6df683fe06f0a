"""The OpenAI Responses API (/v1/responses …) with the real openai SDK on the packaged
llama.cpp model; one server with two API keys (stored responses are per key)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.helpers import WEATHER_TOOL, Server, base_config, served, smollm_entry
from tests.openai_shapes import assert_openai_shape

KEY, OTHER = "sk-resp-one", "sk-resp-two"
MODEL = "smollm2"
PINNED: dict[str, Any] = {"temperature": 0, "extra_body": {"seed": 7}}
WEATHER = {  # the shared tool in the Responses shape, strict
    "type": "function",
    **WEATHER_TOOL["function"],
    "parameters": {**WEATHER_TOOL["function"]["parameters"], "additionalProperties": False},
    "strict": True,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cfg = base_config(api_keys=f"{KEY},{OTHER}", models=[smollm_entry(n_parallel=2)])
    with served(cfg, tmp_path_factory.mktemp("responses"), "responses_api", 1) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def other(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=OTHER, max_retries=0, timeout=120)


def _raw(server: Server, method: str, path: str, key: str = KEY, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{server.base_url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=120, **kw)


def test_create_string_input_and_instructions(client: openai.OpenAI, server: Server) -> None:
    resp = client.responses.create(model=MODEL, input="Name a colour.", instructions="You are terse.", max_output_tokens=24, **PINNED)
    assert resp.object == "response" and resp.id.startswith("resp_") and resp.status in ("completed", "incomplete")
    assert resp.output_text and resp.output[-1].type == "message"
    assert resp.usage is not None and resp.usage.input_tokens > 0 and 0 < resp.usage.output_tokens <= 24
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert resp.instructions == "You are terse."
    r = _raw(server, "POST", "/v1/responses", json={"model": MODEL, "input": [{"role": "user", "content": "Say hi."}], "max_output_tokens": 8})
    assert r.status_code == 200, r.text
    assert_openai_shape("Response", r.json())


def test_stream_matches_whole(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = dict(model=MODEL, input="Name a fruit.", max_output_tokens=48, **PINNED)
    whole = client.responses.create(**kw)
    with client.responses.stream(**kw) as stream:
        events = list(stream)
    types = [ev.type for ev in events]
    final = events[-1].response  # type: ignore[union-attr]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] in ("response.completed", "response.incomplete")
    assert types.index("response.output_item.added") < types.index("response.output_text.delta") < types.index("response.output_text.done")
    assert types.index("response.output_text.done") < types.index("response.output_item.done") < len(types) - 1
    assert final.output_text == whole.output_text and final.status == whole.status
    assert final.usage is not None and whole.usage is not None and final.usage.output_tokens == whole.usage.output_tokens
    deltas = [ev.delta for ev in client.responses.create(stream=True, **kw) if ev.type == "response.output_text.delta"]
    assert "".join(deltas) == whole.output_text


def test_function_call_then_output(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL, input="What's the weather in Paris?", tools=[WEATHER], tool_choice="required", parallel_tool_calls=False, max_output_tokens=128, **PINNED
    )
    calls = [o for o in first.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and calls[0].call_id
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"temperature": 21, "sky": "sunny"}'}],
        tools=[WEATHER],
        tool_choice="none",
        max_output_tokens=32,
        **PINNED,
    )
    assert second.previous_response_id == first.id
    assert second.output[-1].type == "message" and second.output_text
    assert [i.type for i in client.responses.input_items.list(second.id).data] == ["function_call_output"]
    # the stored conversation reached the model: more prompt than the tool output alone
    alone = client.responses.create(
        model=MODEL, input='{"temperature": 21, "sky": "sunny"}', tools=[WEATHER], tool_choice="none", max_output_tokens=4, **PINNED
    )
    assert second.usage is not None and alone.usage is not None and second.usage.input_tokens > alone.usage.input_tokens + 10


def test_stream_function_call(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=MODEL, input="Weather in Oslo?", tools=[WEATHER], tool_choice="required", parallel_tool_calls=False, max_output_tokens=128, **PINNED
    ) as stream:
        events = list(stream)
    types = [ev.type for ev in events]
    final = events[-1].response  # type: ignore[union-attr]
    assert "response.function_call_arguments.delta" in types and "response.function_call_arguments.done" in types
    call = next(o for o in final.output if o.type == "function_call")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])


def test_json_schema_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    resp = client.responses.create(
        model=MODEL,
        input="Invent a person.",
        text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}},
        max_output_tokens=64,
        **PINNED,
    )
    jsonschema.validate(json.loads(resp.output_text), schema)
    assert resp.text is not None and resp.text.format is not None and resp.text.format.type == "json_schema"


def test_retrieve_input_items_delete_and_other_key(client: openai.OpenAI, other: openai.OpenAI, server: Server) -> None:
    resp = client.responses.create(model=MODEL, input="Say yes.", max_output_tokens=8, **PINNED)
    got = client.responses.retrieve(resp.id)
    assert got.id == resp.id and got.output_text == resp.output_text
    items = client.responses.input_items.list(resp.id)
    assert [i.type for i in items.data] == ["message"] and items.data[0].id
    # another key sees none of it, and cannot continue it
    for call in (
        lambda: other.responses.retrieve(resp.id),
        lambda: other.responses.input_items.list(resp.id),
        lambda: other.responses.delete(resp.id),
        lambda: other.responses.create(model=MODEL, input="and?", previous_response_id=resp.id, max_output_tokens=4),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    r = _raw(server, "GET", f"/v1/responses/{resp.id}", key=OTHER)
    assert r.status_code == 404 and r.json()["error"]["param"] == "response_id"
    client.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(resp.id)
    # store: false keeps nothing
    unstored = client.responses.create(model=MODEL, input="Hi.", store=False, max_output_tokens=4)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_refused_inputs(client: openai.OpenAI, server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model=MODEL, input="news?", tools=[{"type": "web_search"}])
    assert "web_search" in str(exc.value) and exc.value.body["param"] == "tools.0.type"  # type: ignore[index]
    bad = [
        {"model": MODEL, "input": [{"type": "item_reference", "id": "x"}]},
        {"model": MODEL, "input": [{"role": "robot", "content": "x"}]},
        {"model": MODEL, "input": "x", "max_output_tokens": 10**9},
        {"model": MODEL, "input": ["x"] * 5000},
        {"model": MODEL, "input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}},
    ]
    for body in bad:
        r = _raw(server, "POST", "/v1/responses", json=body)
        assert r.status_code == 400, (body, r.status_code, r.text)
        assert set(r.json()["error"]) >= {"message", "type", "param", "code"}
