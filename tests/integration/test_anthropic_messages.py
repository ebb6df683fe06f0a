"""The Anthropic Messages API (/v1/messages, /v1/messages/count_tokens) with the real
anthropic SDK and LangChain's ChatAnthropic, on the packaged llama.cpp model; one server
with an API key (the SDK sends it as x-api-key)."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field

from tests.helpers import WEATHER_TOOL, Server, base_config, served, smollm_entry

KEY = "sk-anthropic-test"
MODEL = "smollm2"
WEATHER = {  # the shared tool in Anthropic's shape
    "name": WEATHER_TOOL["function"]["name"],
    "description": WEATHER_TOOL["function"]["description"],
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with served(base_config(api_keys=KEY, models=[smollm_entry(n_parallel=2)]), tmp_path_factory.mktemp("anthropic"), "anthropic_messages", 1) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=120)


def _text(msg: Any) -> str:
    return "".join(b.text for b in msg.content if b.type == "text")


def test_create_text_and_stream_equal(client: anthropic.Anthropic) -> None:
    kw: dict[str, Any] = dict(
        model=MODEL, max_tokens=24, extra_body={"temperature": 0}, system="You are terse.", messages=[{"role": "user", "content": "Name a colour."}]
    )
    msg = client.messages.create(**kw)
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.stop_reason in ("end_turn", "max_tokens") and _text(msg)
    assert msg.usage.input_tokens > 0 and 0 < msg.usage.output_tokens <= 24
    with client.messages.stream(**kw) as stream:
        deltas = [t for t in stream.text_stream]
        final = stream.get_final_message()
    assert "".join(deltas) == _text(msg)
    assert _text(final) == _text(msg) and final.stop_reason == msg.stop_reason
    assert final.usage.output_tokens == msg.usage.output_tokens
    # Anthropic counts prompt tokens read from the cache apart: the repeat was (mostly) cached
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == msg.usage.input_tokens + msg.usage.cache_read_input_tokens
    assert final.usage.cache_read_input_tokens > 0


def test_count_tokens_equals_usage(client: anthropic.Anthropic) -> None:
    messages = [{"role": "user", "content": "Tell me about Paris."}]
    msg = client.messages.create(model=MODEL, max_tokens=4, system="Be brief.", messages=messages)
    counted = client.messages.count_tokens(model=MODEL, system="Be brief.", messages=messages)
    assert counted.input_tokens == msg.usage.input_tokens + msg.usage.cache_read_input_tokens > 0


def test_max_tokens_and_stop_sequences(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "Write a long story about a dragon."}])
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 3
    msg = client.messages.create(
        model=MODEL, max_tokens=64, extra_body={"temperature": 0}, stop_sequences=["1"], messages=[{"role": "user", "content": "Count from 1 to 10: 1, 2, 3"}]
    )
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "1"
    assert "1" not in _text(msg)


def test_tool_use_round_trip(client: anthropic.Anthropic) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What's the weather in Paris?"}]
    msg = client.messages.create(model=MODEL, max_tokens=200, extra_body={"temperature": 0}, tools=[WEATHER], tool_choice={"type": "any"}, messages=messages)
    assert msg.stop_reason == "tool_use"
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, WEATHER["input_schema"])
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "Sunny, 22 degrees"}]},
    ]
    answer = client.messages.create(model=MODEL, max_tokens=32, tools=[WEATHER], tool_choice={"type": "none"}, messages=messages)
    assert answer.stop_reason in ("end_turn", "max_tokens") and _text(answer)
    assert not [b for b in answer.content if b.type == "tool_use"]


def test_tool_use_streamed(client: anthropic.Anthropic) -> None:
    kw: dict[str, Any] = dict(
        model=MODEL, max_tokens=128, extra_body={"temperature": 0}, tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather in Rome?"}],
    )
    whole = client.messages.create(**kw)
    with client.messages.stream(**kw) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    streamed = [b for b in final.content if b.type == "tool_use"]
    assert [b.input for b in streamed] == [b.input for b in whole.content if b.type == "tool_use"]
    jsonschema.validate(streamed[0].input, WEATHER["input_schema"])


def _png() -> str:
    raw = b"\x00\xff\x00\x00"
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def test_bad_requests_in_anthropic_shape(client: anthropic.Anthropic, server: Server) -> None:
    with pytest.raises(anthropic.BadRequestError):  # found by the fuzz run: it was a 500
        client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": []}])
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": _png()}}
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": [image, {"type": "text", "text": "what is this?"}]}])
    assert e.value.status_code == 400 and e.value.body["type"] == "error"  # type: ignore[index]
    assert e.value.body["error"]["type"] == "invalid_request_error" and "param" not in e.value.body["error"]  # type: ignore[index]
    assert "image" in e.value.body["error"]["message"].lower()  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=MODEL, max_tokens=0, messages=[{"role": "user", "content": "hi"}])
    assert "max_tokens" in e.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}], tool_choice={"type": "any"})
    assert "tool_choice" in e.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as nf:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert nf.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    # the raw shape, and auth: x-api-key accepted, a wrong one refused in the same shape
    r = httpx.post(f"{server.base_url}/v1/messages", json={"model": MODEL, "messages": []}, headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    assert r.status_code == 400 and r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    bad = anthropic.Anthropic(base_url=server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as au:
        bad.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert au.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


class Weather(BaseModel):
    city: str = Field(max_length=40)
    unit: str = Field(pattern="^(celsius|fahrenheit)$")


def test_langchain_chat_anthropic(server: Server) -> None:
    from langchain_anthropic import ChatAnthropic

    llm = ChatAnthropic(model=MODEL, base_url=server.base_url, api_key=KEY, max_tokens=64, temperature=0, max_retries=0)  # type: ignore[call-arg]
    assert llm.invoke("Say hello.").content
    bound = llm.bind_tools([WEATHER], tool_choice="get_weather")
    out = bound.invoke("Weather in Oslo?")
    assert out.tool_calls and out.tool_calls[0]["name"] == "get_weather"
    jsonschema.validate(out.tool_calls[0]["args"], WEATHER["input_schema"])
    structured = llm.with_structured_output(Weather).invoke("Weather in Oslo in celsius?")
    assert isinstance(structured, Weather)
