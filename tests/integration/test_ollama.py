"""Ollama's native API (/api/*) on the real packaged SmolLM2 (llama.cpp) and MiniLM, through
the real server, driven by the real ``ollama`` Python client and LangChain's ChatOllama."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import numpy as np
import ollama
import openai
import pytest

from tests.embed_helpers import MINILM, entry
from tests.helpers import (
    THINK_TEMPLATE,
    WEATHER_TOOL,
    Server,
    assert_workers_idle,
    base_config,
    served,
    smollm_entry,
)

KEY = "sk-ollama-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
WEATHER = WEATHER_TOOL
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 30}, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
GREEDY = {"temperature": 0, "seed": 7, "num_predict": 24}
HI = [{"role": "user", "content": "Write one sentence about the sea."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    think = smollm_entry("smollm2-think", chat_template=THINK_TEMPLATE, reasoning_parser="deepseek_r1")
    del think["smollm2-think"]["alias"]
    models = [smollm_entry(n_parallel=2), entry("minilm", MINILM, "embedding"), think]
    with served(base_config(api_keys=KEY, models=models), tmp_path_factory.mktemp("ollama"), "ollama", 3) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> ollama.Client:
    return ollama.Client(host=server.base_url, headers=AUTH, timeout=120)


@pytest.fixture(scope="module")
def oai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=120)


def _check_stats(r: Any) -> None:
    assert r.done is True and r.done_reason in ("stop", "length")
    assert r.prompt_eval_count > 0 and r.eval_count > 0
    assert r.total_duration > 0 and r.load_duration == 0
    assert r.eval_duration >= 0 and r.prompt_eval_duration >= 0
    assert r.created_at and r.model


def test_chat_stream_equals_non_stream_and_the_openai_answer(client: ollama.Client, oai: openai.OpenAI) -> None:
    whole = client.chat(model="smollm2", messages=HI, options=GREEDY, stream=False)
    _check_stats(whole)
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.eval_count == 24 and whole.done_reason == "length"
    parts = list(client.chat(model="smollm2", messages=HI, options=GREEDY, stream=True))
    assert len(parts) > 2 and all(not p.done for p in parts[:-1])
    _check_stats(parts[-1])
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    ref = oai.chat.completions.create(model="smollm2", messages=HI, temperature=0, seed=7, max_tokens=24)  # type: ignore[arg-type]
    assert ref.choices[0].message.content == whole.message.content


def test_ndjson_wire_format(server: Server) -> None:
    body = {"model": "smollm2", "messages": HI, "options": {"num_predict": 4}}  # streams by default
    with httpx.stream("POST", f"{server.base_url}/api/chat", json=body, headers=AUTH, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "length" and lines[-1]["eval_count"] == 4
    assert all(line["done"] is False for line in lines[:-1])


def test_generate_stream_non_stream_raw_and_system(client: ollama.Client, oai: openai.OpenAI) -> None:
    prompt = "Name three colours."
    whole = client.generate(model="smollm2", prompt=prompt, options=GREEDY)
    _check_stats(whole)
    streamed = list(client.generate(model="smollm2", prompt=prompt, options=GREEDY, stream=True))
    assert "".join(p.response for p in streamed) == whole.response and streamed[-1].done
    # not raw: the model's chat template, as one user turn
    ref = oai.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": prompt}], temperature=0, seed=7, max_tokens=24)
    assert ref.choices[0].message.content == whole.response
    # raw: the prompt as is, as /v1/completions
    raw = client.generate(model="smollm2", prompt="The capital of France is", raw=True, options={"temperature": 0, "num_predict": 8})
    cref = oai.completions.create(model="smollm2", prompt="The capital of France is", temperature=0, max_tokens=8)
    assert raw.response == cref.choices[0].text and raw.eval_count == 8
    with_system = client.generate(model="smollm2", prompt=prompt, system="Answer only in French.", options=GREEDY)
    sref = oai.chat.completions.create(
        model="smollm2", messages=[{"role": "system", "content": "Answer only in French."}, {"role": "user", "content": prompt}],
        temperature=0, seed=7, max_tokens=24,
    )
    assert with_system.response == sref.choices[0].message.content
    loaded = client.generate(model="smollm2")  # no prompt: Ollama's "load the model"
    assert loaded.done and loaded.done_reason == "load"


def test_options_num_predict_and_stop(client: ollama.Client) -> None:
    short = client.chat(model="smollm2", messages=HI, options={"temperature": 0, "num_predict": 3})
    assert short.done_reason == "length" and short.eval_count == 3
    full = client.chat(model="smollm2", messages=HI, options=GREEDY).message.content or ""
    words = full.split()
    assert len(words) > 3
    stop = words[2]
    cut = client.chat(model="smollm2", messages=HI, options={**GREEDY, "stop": [stop]})
    assert cut.done_reason == "stop" and stop not in (cut.message.content or "")
    assert full.startswith(cut.message.content or "")


def test_format_json_and_schema(client: ollama.Client) -> None:
    ask = [{"role": "user", "content": "Describe a person called Ann aged 31 as JSON."}]
    city = [{"role": "user", "content": "Reply with a JSON object whose only key is city, set to Paris."}]
    r = client.chat(model="smollm2", messages=city, format="json", options={"temperature": 0, "num_predict": 120})
    assert r.done_reason == "stop" and isinstance(json.loads(r.message.content or ""), dict)
    for seed in range(3):
        r = client.chat(model="smollm2", messages=ask, format=PERSON, options={"seed": seed, "num_predict": 80})
        jsonschema.validate(json.loads(r.message.content or ""), PERSON)
    g = client.generate(model="smollm2", prompt="A person as JSON.", format=PERSON, options={"temperature": 0, "num_predict": 80})
    jsonschema.validate(json.loads(g.response), PERSON)


def test_tools_in_chat_arguments_are_objects(client: ollama.Client, server: Server) -> None:
    # Ollama has no tool_choice and the tiny model does not call tools unprompted, so the
    # call is forced with the OpenAI ``tool_choice`` extension; the answers are read with the
    # real client's own types (arguments an object, not a string)
    msgs: list[Any] = [{"role": "user", "content": "What's the weather in Paris in celsius?"}]
    body = {"model": "smollm2", "messages": msgs, "tools": [WEATHER], "tool_choice": "required", "options": {"temperature": 0}}
    r = httpx.post(f"{server.base_url}/api/chat", json={**body, "stream": False}, headers=AUTH, timeout=120)
    whole = ollama.ChatResponse.model_validate(r.json())
    with httpx.stream("POST", f"{server.base_url}/api/chat", json=body, headers=AUTH, timeout=120) as s:
        parts = [ollama.ChatResponse.model_validate_json(line) for line in s.iter_lines() if line]
    streamed = [c for p in parts for c in (p.message.tool_calls or [])]
    assert whole.message.tool_calls and whole.done_reason == "stop" and parts[-1].done
    assert [c.model_dump() for c in streamed] == [c.model_dump() for c in whole.message.tool_calls]
    for c in whole.message.tool_calls:
        assert c.function.name == "get_weather" and isinstance(c.function.arguments, dict)
        jsonschema.validate(dict(c.function.arguments), WEATHER["function"]["parameters"])  # type: ignore[index]
    # the real client: tools (auto) accepted, and the tool's answer goes back as a tool
    # message (matched to its call by tool_name)
    msgs += [
        {"role": "assistant", "content": "", "tool_calls": [c.model_dump() for c in whole.message.tool_calls]},
        {"role": "tool", "content": "21 degrees, sunny", "tool_name": "get_weather"},
    ]
    after = client.chat(model="smollm2", messages=msgs, tools=[WEATHER], options={"temperature": 0, "num_predict": 30})
    assert after.done and (after.message.content or after.message.tool_calls)


def test_embed_equals_v1_embeddings_and_legacy(client: ollama.Client, oai: openai.OpenAI) -> None:
    texts = ["The cat sits on the mat.", "Quarterly revenue grew."]
    r = client.embed(model="minilm:latest", input=texts)
    ref = oai.embeddings.create(model="minilm", input=texts)
    assert np.allclose(np.array(r.embeddings), np.array([d.embedding for d in ref.data]), atol=1e-6)
    assert r.prompt_eval_count == ref.usage.prompt_tokens and r.model == "minilm:latest"
    one = client.embed(model="minilm", input=texts[0])
    assert len(one.embeddings) == 1 and np.allclose(one.embeddings[0], r.embeddings[0], atol=1e-6)
    legacy = client.embeddings(model="minilm", prompt=texts[0])
    assert np.allclose(legacy.embedding, r.embeddings[0], atol=1e-6)


def test_list_show_ps_version_and_names(client: ollama.Client, server: Server) -> None:
    names = {m.model for m in client.list().models}
    assert {"smollm2:latest", "minilm:latest", "gpt-3.5-turbo:latest"} <= names
    for m in client.list().models:
        assert m.digest and len(m.digest) == 64 and m.modified_at is not None and m.details is not None
    show = client.show("smollm2:latest")
    assert show.modelinfo and show.modelinfo.get("auto.context_length") == 2048
    assert show.capabilities and "completion" in show.capabilities and show.details is not None
    assert "embedding" in (client.show("minilm").capabilities or [])
    ps = client.ps().models
    assert {"smollm2:latest", "minilm:latest"} <= {m.name for m in ps}
    assert next(m for m in ps if m.name == "smollm2:latest").context_length == 2048
    v = httpx.get(f"{server.base_url}/api/version", headers=AUTH).json()
    assert isinstance(v["version"], str) and v["version"]
    # the alias, with a tag, answers too
    assert client.chat(model="gpt-3.5-turbo:latest", messages=HI, options={"num_predict": 2}).done


def test_errors_in_ollama_shape(client: ollama.Client, server: Server) -> None:
    for name, call in (
        ("nope:7b", lambda: client.chat(model="nope:7b", messages=HI)),
        ("nope", lambda: client.generate(model="nope", prompt="x")),
        ("nope:latest", lambda: client.embed(model="nope:latest", input="x")),
        ("nope", lambda: client.show("nope")),
    ):
        with pytest.raises(ollama.ResponseError) as ei:
            call()
        assert ei.value.status_code == 404 and ei.value.error == f"model '{name}' not found"
    with pytest.raises(ollama.ResponseError) as ei:
        list(client.chat(model="nope", messages=HI, stream=True))
    assert ei.value.status_code == 404
    bad = httpx.post(f"{server.base_url}/api/chat", content=b"{not json", headers=AUTH)
    assert bad.status_code == 400 and isinstance(bad.json()["error"], str)
    bad = httpx.post(f"{server.base_url}/api/chat", json={"model": "smollm2", "messages": HI, "options": {"temperature": -3}}, headers=AUTH)
    assert bad.status_code == 400 and "temperature" in bad.json()["error"]
    bad = httpx.post(f"{server.base_url}/api/chat", json={"model": "smollm2", "messages": [{"role": "bogus", "content": "x"}]}, headers=AUTH)
    assert bad.status_code == 400 and isinstance(bad.json()["error"], str)
    bad = httpx.post(f"{server.base_url}/api/embed", json={"model": "smollm2", "input": "x"}, headers=AUTH)
    assert 400 <= bad.status_code < 500 and isinstance(bad.json()["error"], str)
    # as on /v1: a body not declared JSON (a web page's simple cross-site POST) is refused
    form = httpx.post(f"{server.base_url}/api/chat", content=b'{"model": "smollm2"}', headers={**AUTH, "Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert form.status_code == 415 and isinstance(form.json()["error"], str)
    assert httpx.get(f"{server.base_url}/api/tags").status_code == 401  # the API key guards /api too


def test_langchain_chat_ollama(server: Server) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_ollama import ChatOllama
    from pydantic import BaseModel, Field

    llm = ChatOllama(model="smollm2:latest", base_url=server.base_url, temperature=0, num_predict=24, client_kwargs={"headers": AUTH})
    out = llm.invoke("Say hello.")
    assert isinstance(out.content, str) and out.content
    assert out.usage_metadata and out.usage_metadata["output_tokens"] > 0

    def get_weather(city: str, unit: str) -> str:
        """Get the current weather for a city in celsius or fahrenheit."""
        return "sunny"

    called = ChatOllama(model="smollm2", base_url=server.base_url, temperature=0, client_kwargs={"headers": AUTH}).bind_tools([get_weather])
    # one earlier call and its result in the history (LangChain's AIMessage/ToolMessage →
    # Ollama tool_calls / tool messages): the tiny model then calls the tool by itself
    history = [
        HumanMessage("What's the weather in Paris in celsius?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris", "unit": "celsius"}, "id": "1"}]),
        ToolMessage("21 degrees, sunny", tool_call_id="1"),
        HumanMessage("And in Rome, in celsius?"),
    ]
    msg = called.invoke(history)
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather" and isinstance(msg.tool_calls[0]["args"], dict)

    class Person(BaseModel):
        name: str = Field(max_length=30)
        age: int = Field(ge=0, le=150)

    structured = ChatOllama(model="smollm2", base_url=server.base_url, temperature=0, num_predict=80, client_kwargs={"headers": AUTH})
    p = structured.with_structured_output(Person, method="json_schema").invoke("Ann is 31 years old.")
    assert isinstance(p, Person)


def test_hang_up_stops_the_generation(server: Server) -> None:
    body = {"model": "smollm2", "messages": HI, "options": {"num_predict": 1500, "temperature": 1, "seed": 3}}
    with httpx.stream("POST", f"{server.base_url}/api/chat", json=body, headers=AUTH, timeout=120) as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["done"] is False
    assert_workers_idle(server, within=5)  # 1500 tokens take far longer than this


def test_think_becomes_message_thinking(client: ollama.Client) -> None:
    """``think`` is the template's ``enable_thinking``; the reasoning comes back as
    ``message.thinking`` (``thinking`` on generate), streamed or not."""
    kw: dict[str, Any] = {"model": "smollm2-think", "messages": [{"role": "user", "content": "Hi"}], "options": {"temperature": 0, "num_predict": 30}}
    whole = client.chat(**kw, think=True)
    assert whole.message.thinking and "<think>" not in whole.message.thinking
    parts = list(client.chat(**kw, think=True, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == whole.message.thinking
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    off = client.chat(**kw, think=False)
    assert not off.message.thinking and off.message.content
    g = client.generate(model="smollm2-think", prompt="Hi", think=True, options={"temperature": 0, "num_predict": 30})
    assert g.thinking == whole.message.thinking


def test_root_answers_ollama_probes_and_sends_browsers_to_the_docs(client: ollama.Client, server: Server) -> None:
    """Ollama clients (Open WebUI, Continue …) probe ``GET /`` / ``HEAD /`` for "Ollama is
    running"; a browser (it accepts HTML) still lands on the API docs. No key needed, as Ollama."""
    probe = client._client.get("/")  # the ollama client's own connection
    assert probe.status_code == 200 and probe.text == "Ollama is running"
    head = httpx.head(f"{server.base_url}/", timeout=10)
    assert head.status_code == 200 and head.headers["content-type"].startswith("text/plain")
    browser = httpx.get(f"{server.base_url}/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}, timeout=10)
    assert browser.status_code == 307 and browser.headers["location"] == "/docs"


def test_openapi_documents_the_ollama_request_bodies(server: Server) -> None:
    paths = httpx.get(f"{server.base_url}/openapi.json", timeout=10).json()["paths"]
    for path, field in [("/api/chat", "messages"), ("/api/generate", "prompt"), ("/api/embed", "input"), ("/api/embeddings", "prompt"), ("/api/show", "model")]:
        schema = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert field in schema["properties"] and "$ref" not in json.dumps(schema), path
    msg = paths["/api/chat"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["messages"]
    assert msg["items"]["properties"]["role"]  # the nested message model is inlined, with its bounds
    assert paths["/api/chat"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["messages"].get("maxItems")
