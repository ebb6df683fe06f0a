"""Responses API translation without a server: the streamed events and the whole body
parse with the openai SDK's models and OpenAI's schema, the request maps onto chat, and
the response store is bounded, expiring and per owner."""

from __future__ import annotations

import asyncio
import typing
from types import SimpleNamespace
from typing import Any

import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from gpt_server.errors import BadRequestError
from gpt_server.gateway.response_store import ResponseStore
from gpt_server.gateway.routes import responses as routes
from gpt_server.gateway.serving import ChatRun
from gpt_server.protocol.responses import ResponsesRequest, normalize_input, to_chat
from gpt_server.protocol.worker import DeltaEvent, FinishEvent, ToolCallDelta, UsageEvent
from tests.openai_shapes import assert_openai_shape

_MEMBERS = typing.get_args(typing.get_args(ResponseStreamEvent)[0])
EVENT_MODELS = {typing.get_args(m.model_fields["type"].annotation)[0]: m for m in _MEMBERS}


class _Run:
    request_id, model, created = "resp-abc123", "smollm2", 1

    def __init__(self, events: list[Any]) -> None:
        self.events = events

    async def _batches(self) -> Any:
        for e in self.events:
            yield [e]

    def batches(self) -> Any:
        return self._batches()

    async def aclose(self) -> None:
        pass


def _stream(req: ResponsesRequest, events: list[Any], store: ResponseStore) -> list[dict[str, Any]]:
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(responses=store)))

    async def run() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        fake = _Run(events)
        tr = routes._ResponseStream(fake, req, lambda final: routes._keep(request, "owner", req, final, [], [], "chain"))  # type: ignore[arg-type]
        async for batch in ChatRun.translate(fake, tr):  # type: ignore[arg-type]
            out += batch
        return out

    return asyncio.run(run())


def test_stream_events_parse_with_sdk_and_schema() -> None:
    req = ResponsesRequest.model_validate(
        {"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}], "reasoning": {"effort": "low"}}
    )
    events = [
        DeltaEvent(index=0, text="", reasoning="think"),
        DeltaEvent(index=0, text="Hel"),
        DeltaEvent(index=0, text="lo"),
        DeltaEvent(index=0, text="", tool_calls=[ToolCallDelta(index=0, id="call_1", name="f", arguments='{"a"')]),
        DeltaEvent(index=0, text="", tool_calls=[ToolCallDelta(index=0, arguments=":1}")]),
        FinishEvent(index=0, finish_reason="tool_calls"),
        UsageEvent(prompt_tokens=3, completion_tokens=4),
    ]
    store = ResponseStore(10, 10**6, 60)
    out = _stream(req, events, store)
    for e in out:
        EVENT_MODELS[e["type"]].model_validate(e)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    types = [e["type"] for e in out]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types[-1] == "response.completed"
    final = out[-1]["response"]
    parsed = Response.model_validate(final)
    assert parsed.output_text == "Hello" and [o.type for o in parsed.output] == ["reasoning", "message", "function_call"]
    assert parsed.output[2].arguments == '{"a":1}'  # type: ignore[union-attr]
    assert_openai_shape("Response", final)
    assert store.get("owner", final["id"]) is not None and store.get("someone else", final["id"]) is None
    # the SDK's typed-stream accumulator (client.responses.stream) takes the sequence
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=req.tools, text_format=omit)  # type: ignore[arg-type]
    for e in out:
        state.handle_event(EVENT_MODELS[e["type"]].model_validate(e))
    done = state._completed_response
    assert done is not None and done.output_text == "Hello" and done.output[2].type == "function_call"


def test_request_translation() -> None:
    req = ResponsesRequest.model_validate(
        {
            "model": "m",
            "instructions": "be terse",
            "input": [
                {"role": "developer", "content": "dev"},
                {"role": "user", "content": [{"type": "input_text", "text": "hi"}, {"type": "input_image", "image_url": "data:image/png;base64,AA=="}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
            ],
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
            "max_output_tokens": 5,
        }
    )
    chat = to_chat(req, normalize_input(req))
    assert [m.role for m in chat.messages] == ["system", "system", "user", "assistant", "tool"]
    assert chat.messages[3].tool_calls is not None and len(chat.messages[3].tool_calls) == 2
    assert chat.max_tokens == 5 and chat.response_format is not None and chat.response_format.type == "json_schema"
    for body, param in (
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "file_search"}}, "tool_choice.type"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input.0.type"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input.0.content.0.type"),
    ):
        r = ResponsesRequest.model_validate(body)
        with pytest.raises(BadRequestError) as exc:
            to_chat(r, normalize_input(r))
        assert exc.value.param == param


def test_store_bounds_expiry_and_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResponseStore(2, 10_000, 60)
    for i in range(3):
        assert store.put("a", {"id": f"r{i}", "output": []}, [], [])
    assert len(store) == 2 and store.get("a", "r0") is None and store.get("a", "r2") is not None
    assert not store.put("a", {"id": "big", "output": ["x" * 20_000]}, [], [])
    assert store.get("b", "r2") is None and not store.delete("b", "r2") and store.delete("a", "r2")
    now = [1000.0]
    monkeypatch.setattr("gpt_server.gateway.response_store.time.monotonic", lambda: now[0])
    store.put("a", {"id": "t", "output": []}, [], [])
    now[0] += 61
    assert store.get("a", "t") is None
