"""The Ollama → OpenAI request translation (gpt_server.protocol.ollama), checked by the
OpenAI request models it feeds."""

from __future__ import annotations

import orjson

from gpt_server.protocol.ollama import (
    OllamaChatRequest,
    OllamaGenerateRequest,
    chat_body,
    done_reason,
    generate_chat_body,
    generate_raw_body,
    model_tag,
    tool_calls_out,
)
from gpt_server.protocol.openai import ChatCompletionRequest, CompletionRequest

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def test_options_format_think_and_images() -> None:
    req = OllamaChatRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "what is this?", "images": [PNG]}],
            "options": {"temperature": 0.2, "top_p": 0.9, "top_k": 5, "num_predict": 7, "stop": ["x"], "seed": 4, "num_ctx": 8192, "repeat_penalty": 1.1, "num_gpu": 1},
            "format": {"type": "object"},
            "think": True,
            "keep_alive": "5m",
        }
    )
    body = chat_body(req, "m")
    oai = ChatCompletionRequest.model_validate(body)
    assert (oai.temperature, oai.top_p, oai.top_k, oai.max_tokens, oai.seed) == (0.2, 0.9, 5, 7, 4)
    assert oai.stop == ["x"] and oai.repetition_penalty == 1.1 and oai.enable_thinking is True
    assert oai.response_format is not None and oai.response_format.type == "json_schema"
    parts = body["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "what is this?"}
    assert parts[1]["image_url"]["url"] == f"data:image/png;base64,{PNG}"
    # num_predict < 0 is "no limit"; "json" is a JSON object
    body = chat_body(OllamaChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": -1}, "format": "json"}), "m")
    assert "max_tokens" not in body and body["response_format"] == {"type": "json_object"}


def test_tool_calls_get_ids_and_tool_results_find_their_call() -> None:
    req = OllamaChatRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "weather and time?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                    {"function": {"name": "time", "arguments": {}}},
                ]},
                {"role": "tool", "content": "12:00", "tool_name": "time"},
                {"role": "tool", "content": "sunny", "tool_name": "weather"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        }
    )
    body = chat_body(req, "m")
    ChatCompletionRequest.model_validate(body)
    calls = body["messages"][1]["tool_calls"]
    assert [orjson.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}, {}]
    assert body["messages"][2]["tool_call_id"] == calls[1]["id"] and body["messages"][3]["tool_call_id"] == calls[0]["id"]
    out = tool_calls_out([{"id": "c", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}}])
    assert out == [{"function": {"name": "weather", "arguments": {"city": "Rome"}}}]


def test_generate_templated_and_raw() -> None:
    req = OllamaGenerateRequest.model_validate({"model": "m", "prompt": "hi", "system": "be brief", "options": {"num_predict": 3}})
    body = generate_chat_body(req, "m")
    assert [m["role"] for m in body["messages"]] == ["system", "user"] and body["max_tokens"] == 3
    ChatCompletionRequest.model_validate(body)
    raw = CompletionRequest.model_validate(generate_raw_body(OllamaGenerateRequest.model_validate({"model": "m", "prompt": "hi", "raw": True}), "m"))
    assert raw.prompt == "hi" and raw.max_tokens is None


def test_names_and_reasons() -> None:
    assert model_tag("smollm2") == "smollm2:latest" and model_tag("qwen:7b") == "qwen:7b" and model_tag("org/m") == "org/m:latest"
    assert done_reason("length") == "length" and done_reason("tool_calls") == "stop" and done_reason(None) == "stop"


def test_ndjson_stream_ends_with_an_error_line() -> None:
    """A failure after the first line ends the NDJSON stream with ``{"error": "..."}``."""
    from starlette.applications import Starlette
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from gpt_server.errors import UpstreamError
    from gpt_server.gateway.routes.ollama import NDJSONResponse

    async def lines():  # noqa: ANN202
        yield [{"done": False, "response": "a"}, {"done": False, "response": "b"}]
        raise UpstreamError("the model worker stopped responding")

    async def endpoint(request):  # noqa: ANN001, ANN202
        return NDJSONResponse(lines())

    with TestClient(Starlette(routes=[Route("/", endpoint)])) as tc:
        r = tc.get("/")
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert [orjson.loads(x) for x in r.text.splitlines()] == [
        {"done": False, "response": "a"},
        {"done": False, "response": "b"},
        {"error": "the model worker stopped responding"},
    ]
