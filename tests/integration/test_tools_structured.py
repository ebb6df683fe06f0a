"""Tool calling, structured output and reasoning on the real packaged model (llama.cpp)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.helpers import THINK_TEMPLATE, WEATHER_TOOL, Server, base_config, served, smollm_entry
from tests.openai_shapes import assert_openai_shape, sse_payloads

WEATHER = WEATHER_TOOL
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer", "minimum": -1000000, "maximum": 1000000}, "b": {"type": "integer", "minimum": -1000000, "maximum": 1000000}},
            "required": ["a", "b"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": 60}, "limit": {"type": "integer", "minimum": 1, "maximum": 10}},
            "required": ["query"],
        },
    },
}
TOOLS = [WEATHER, ADD, SEARCH]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
PROMPTS = [
    "What's the weather in Paris?", "Add 2 and 40.", "Search for pasta recipes.", "Is it raining in Tokyo?",
    "What is 17 plus 25?", "Find news about the election.", "How cold is it in Oslo in fahrenheit?",
    "Sum 1000 and 337.", "Look up the tallest mountain.", "Weather for Cairo please.", "Compute 5 + 9.",
    "Search: best hiking boots", "Should I take an umbrella in London?", "What's 123 + 456?",
    "Find the population of Brazil.", "Temperature in Sydney in celsius?", "Please add 7 and 8.",
    "Search for Python tutorials.", "Is it sunny in Madrid?", "What's the sum of 99 and 1?",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with served(base_config(models=[smollm_entry(n_parallel=4)]), tmp_path_factory.mktemp("tools"), "tools_structured", 1) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=120)


def _check_call(call: Any, only: str | None = None) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in SCHEMAS
    if only:
        assert call.function.name == only
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("choice", ["required", "named"])
def test_enforced_tool_calls_always_valid(client: openai.OpenAI, choice: str) -> None:
    valid = 0
    for i, prompt in enumerate(PROMPTS):
        tc: Any = "required" if choice == "required" else {"type": "function", "function": {"name": TOOLS[i % 3]["function"]["name"]}}
        r = client.chat.completions.create(  # one call each (a 135M model left free repeats calls to max_tokens)
            model="smollm2", messages=[{"role": "user", "content": prompt}], tools=TOOLS, tool_choice=tc, max_tokens=128, seed=i,
            parallel_tool_calls=False,
        )
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls", ch
        assert ch.message.content is None
        for call in ch.message.tool_calls:
            _check_call(call, None if choice == "required" else tc["function"]["name"])
        valid += 1
    assert valid == 20


def test_tool_call_stream_equals_non_stream(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = dict(model="smollm2", messages=[{"role": "user", "content": "Weather in Rome?"}], tools=TOOLS, tool_choice="required", max_tokens=128, temperature=0)
    full = client.chat.completions.create(**kw).choices[0]
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(**kw, stream=True):
        for ch in chunk.choices:
            assert not ch.delta.content, "no markup leaks into content"
            for d in ch.delta.tool_calls or []:
                slot = calls.setdefault(d.index, {"id": d.id, "name": d.function.name, "args": ""})
                if d.id:
                    assert d.function.name, "id and name arrive together, first"
                slot["args"] += d.function.arguments or ""
            finish = ch.finish_reason or finish
    assert finish == "tool_calls"
    assert [(c["name"], c["args"]) for c in calls.values()] == [(c.function.name, c.function.arguments) for c in full.message.tool_calls]


def test_tool_round_trip_with_tool_message(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=64
    ).choices[0].message
    call = first.tool_calls[0]
    r = client.chat.completions.create(
        model="smollm2",
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'},
        ],
        tools=TOOLS,
        max_tokens=40,
        temperature=0,
    )
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_tool_choice_errors(server: Server, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "x"}], tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    assert ei.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "x"}], tools=[{"type": "function", "function": {"name": "bad name!"}}])


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 30},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 15}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "tags"],
}


def test_json_schema_always_validates(client: openai.OpenAI) -> None:
    for i in range(20):
        r = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": f"Describe person number {i} as JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
            max_tokens=160,
            seed=i,
        )
        ch = r.choices[0]
        assert ch.finish_reason == "stop", ch.message.content
        jsonschema.validate(json.loads(ch.message.content), PERSON)


def test_structured_stream_equals_non_stream_and_extensions(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = dict(model="smollm2", messages=[{"role": "user", "content": "A person."}], response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}, max_tokens=160, temperature=0)
    full = client.chat.completions.create(**kw).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**kw, stream=True) if c.choices)
    assert streamed == full
    r = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Is the sky blue?"}], extra_body={"guided_choice": ["yes", "no"]}, max_tokens=5)
    assert r.choices[0].message.content in ("yes", "no")
    r = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "A date?"}], extra_body={"guided_regex": r"\d{4}-\d{2}-\d{2}"}, max_tokens=20)
    assert __import__("re").fullmatch(r"\d{4}-\d{2}-\d{2}", r.choices[0].message.content)
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "x"}], extra_body={"guided_regex": "(unclosed"}, max_tokens=5)
    assert ei.value.status_code == 400


def test_structured_output_on_legacy_completions(client: openai.OpenAI) -> None:
    """/v1/completions honours guided_regex/choice/grammar/json and response_format like chat
    (before: accepted and silently dropped); bad ones are 400 as on chat."""
    kw: dict[str, Any] = dict(model="smollm2", max_tokens=24, temperature=0)
    for stream in (False, True):
        r = client.completions.create(prompt="My code is", stream=stream, extra_body={"guided_regex": r"[0-9]{3}-[a-z]{3}"}, **kw)
        text = "".join(c.choices[0].text for c in r if c.choices) if stream else r.choices[0].text
        assert __import__("re").fullmatch(r"[0-9]{3}-[a-z]{3}", text), text
    r = client.completions.create(prompt="The best color is", extra_body={"guided_choice": ["crimson", "teal"]}, **kw)
    assert r.choices[0].text in ("crimson", "teal"), r.choices[0].text
    grammar = 'root ::= ("yes" | "no") ", " [0-9] [0-9]'
    r = client.completions.create(prompt="Answer:", extra_body={"guided_grammar": grammar}, **kw)
    assert __import__("re").fullmatch(r"(yes|no), [0-9]{2}", r.choices[0].text), r.choices[0].text
    small = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["n"]}
    for extra in ({"guided_json": small}, {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": small}}}):
        r = client.completions.create(prompt="A number as JSON:", extra_body=extra, **kw)
        jsonschema.validate(json.loads(r.choices[0].text), small)
    for bad in ({"guided_regex": "(unclosed"}, {"guided_choice": []}, {"guided_regex": "a", "guided_choice": ["b"]}):
        with pytest.raises(openai.BadRequestError):
            client.completions.create(prompt="x", extra_body=bad, **kw)


class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int = Field(ge=0, le=150)


def test_openai_sdk_parse(client: openai.OpenAI) -> None:
    r = client.chat.completions.parse(model="smollm2", messages=[{"role": "user", "content": "Invent a person."}], response_format=Person, max_tokens=200, temperature=0)
    p = r.choices[0].message.parsed
    assert isinstance(p, Person) and isinstance(p.age, int)


def test_langchain(server: Server) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from typing_extensions import TypedDict

    llm = ChatOpenAI(base_url=f"{server.base_url}/v1", api_key="x", model="smollm2", max_tokens=96, temperature=0, max_retries=0)

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    bound = llm.bind_tools([add], tool_choice="add")
    msg = bound.invoke("What is 2 plus 3?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "add"
    args = msg.tool_calls[0]["args"]
    assert isinstance(args["a"], int) and isinstance(args["b"], int)
    # two-turn tool loop with a ToolMessage
    result = add.invoke(args)
    final = llm.bind_tools([add]).invoke(
        [HumanMessage("What is 2 plus 3?"), msg, ToolMessage(str(result), tool_call_id=msg.tool_calls[0]["id"])]
    )
    assert final.content is not None

    class Movie(BaseModel):
        title: str = Field(max_length=60)
        year: int = Field(ge=1800, le=2100)

    class MovieDict(TypedDict):
        title: str
        year: int

    json_schema = {"title": "movie", "type": "object", "properties": {"title": {"type": "string", "maxLength": 60}, "year": {"type": "integer", "minimum": 1800, "maximum": 2100}}, "required": ["title", "year"]}
    for method in ("function_calling", "json_schema"):
        m = llm.with_structured_output(Movie, method=method).invoke("Name a movie.")
        assert isinstance(m, Movie)
        d = llm.with_structured_output(MovieDict, method=method).invoke("Name a movie.")
        assert isinstance(d["year"], int)
        j = llm.with_structured_output(json_schema, method=method).invoke("Name a movie.")
        assert isinstance(j["title"], str)




@pytest.fixture(scope="module")
def think_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    entry = smollm_entry(chat_template=THINK_TEMPLATE, reasoning_parser="deepseek_r1")
    with served(base_config(models=[entry]), tmp_path_factory.mktemp("think"), "reasoning", 1) as srv:
        yield srv


def test_reasoning_split_non_stream_and_stream(think_server: Server) -> None:
    """The template opens <think>; everything up to </think> is reasoning_content."""
    client = openai.OpenAI(base_url=f"{think_server.base_url}/v1", api_key="x", max_retries=0, timeout=60)
    kw: dict[str, Any] = dict(
        model="smollm2",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=40,
        temperature=0,
        extra_body={"guided_regex": r"[a-z]{3,8}( [a-z]{2,8}){1,3}\.</think>[A-Z][a-z]{2,8}( [a-z]{2,8}){0,2}\."},
    )
    msg = client.chat.completions.create(**kw).choices[0].message
    raw = msg.model_dump()
    assert raw["reasoning_content"] and "</think>" not in raw["reasoning_content"]
    assert msg.content and msg.content[0].isupper() and "<think>" not in msg.content
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(**kw, stream=True):
        if chunk.choices:
            d = chunk.choices[0].delta.model_dump()
            reasoning += d.get("reasoning_content") or ""
            content += d.get("content") or ""
    assert (reasoning, content) == (raw["reasoning_content"], msg.content)
    # enable_thinking=false is forwarded to the template: the think block is closed in the prompt
    off = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=12, temperature=0, extra_body={"enable_thinking": False}
    ).choices[0].message
    assert not off.model_dump().get("reasoning_content") and off.content


def test_tool_call_responses_match_the_openai_schema(server: Server) -> None:
    """A tool-calling answer, whole and streamed, validates against OpenAI's response schemas."""
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Weather in Rome?"}], "tools": TOOLS,
            "tool_choice": "required", "max_tokens": 128, "temperature": 0}
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=server.headers(), timeout=120)
    assert r.status_code == 200, r.text
    assert_openai_shape("CreateChatCompletionResponse", r.json())
    assert r.json()["choices"][0]["message"]["tool_calls"]
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json={**body, "stream": True},
                      headers=server.headers(), timeout=120) as s:
        chunks = sse_payloads(s.read().decode())
    assert any(c["choices"] and c["choices"][0]["delta"].get("tool_calls") for c in chunks)
    for c in chunks:
        assert_openai_shape("CreateChatCompletionStreamResponse", c)


MULTI = ["What's the weather in Paris and in Rome?", "Add 2 and 3, and also add 10 and 20.",
         "Weather in Oslo, Cairo and Lima please.", "Search for pasta recipes and for pizza recipes."]


def test_parallel_tool_calls_flag_is_honoured(client: openai.OpenAI) -> None:
    """required + parallel_tool_calls true: 1..8 calls, each valid, streamed with consecutive
    indexes; false: exactly one call, enforced by the grammar and by the parser."""
    counts: list[int] = []
    for i, prompt in enumerate(MULTI * 2):
        kw: dict[str, Any] = dict(model="smollm2", messages=[{"role": "user", "content": prompt}], tools=TOOLS,
                                  tool_choice="required", max_tokens=200, seed=i, temperature=0.8)
        one = client.chat.completions.create(**kw, parallel_tool_calls=False).choices[0]
        assert one.finish_reason == "tool_calls" and len(one.message.tool_calls) == 1
        _check_call(one.message.tool_calls[0])
        many = client.chat.completions.create(**kw, parallel_tool_calls=True).choices[0]
        assert many.finish_reason in ("tool_calls", "length")
        calls = many.message.tool_calls
        assert 1 <= len(calls) <= 8
        for call in calls if many.finish_reason == "tool_calls" else calls[:-1]:  # a cut answer ends mid-call
            _check_call(call)
        counts.append(len(calls))
        indexes: list[int] = []
        for chunk in client.chat.completions.create(**kw, parallel_tool_calls=True, stream=True):
            for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                if d.id:
                    indexes.append(d.index)
        assert indexes == list(range(len(indexes))) and indexes
    assert max(counts) >= 2, counts  # the grammar lets the model make several calls, and it does
