"""Streams written by the worker straight to the client's connection (``transport.direct``).

Two real servers on one model (SmolLM2 Q4_1, llama.cpp worker processes): one as shipped,
where the gateway hands a stream's connection to its worker, and one with
``model_worker_args.direct_streams: false``, where the gateway relays every token. The
openai SDK must see the same chunks from both, the connection must serve the client's next
requests, and the endings (the deadline, a hang-up) must hold as they do when relayed.

Answers asked for whole (no stream) reach the gateway in one event a choice at the end
(``GenerateRequest.whole``), their deltas kept on the engine's thread: each must equal the same
request streamed token by token and put together.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import Server, assert_workers_idle, base_config, hang_up_long_stream, served

MSG = [{"role": "user", "content": "Name three colors."}]
TIMEOUT = 4.0  # the direct server's request_timeout: a long stream meets it


def _handed(server: Server) -> float:
    text = httpx.get(f"{server.base_url}/metrics", headers=server.headers(), timeout=10).text
    m = re.search(r'^gpt_server_streams_handed_total\{model="smollm2"\} ([0-9.e+]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _worker_count(server: Server, key: str) -> int:
    infos = [httpx.get(f"{w['address']}/worker/info", headers=server.internal_headers(), timeout=10).json() for w in server.workers()]
    return sum(int(i[key]) for i in infos)


def _engine_written(server: Server) -> int:
    """Deltas of handed streams the workers wrote from the engine's thread (protocol.deltas)."""
    infos = [httpx.get(f"{w['address']}/worker/info", headers=server.internal_headers(), timeout=10).json() for w in server.workers()]
    return sum(int(i["deltas_direct_total"]) for i in infos)


def _serve(factory: pytest.TempPathFactory, name: str, timeout: float | None = None, **worker_args: bool) -> Iterator[Server]:
    cfg = base_config(api_keys="k1")
    if timeout is not None:
        cfg["serve_args"]["request_timeout"] = timeout
    cfg["model_worker_args"].update(worker_args)
    with served(cfg, factory.mktemp(name), f"{name}_streams", 1) as srv:
        yield srv


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _serve(tmp_path_factory, "direct", timeout=TIMEOUT)


@pytest.fixture(scope="module")
def relayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Streams relayed by the gateway, over HTTP (the path of a worker on another host)."""
    yield from _serve(tmp_path_factory, "relayed", direct_streams=False, invoke_socket=False)


@pytest.fixture(scope="module")
def direct_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Streams handed over, with the generate request sent over HTTP (no invoke socket)."""
    yield from _serve(tmp_path_factory, "direct_http", invoke_socket=False)


def _client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k1", max_retries=0, timeout=60)


def _shapes(chunks: list[Any]) -> list[dict[str, Any]]:
    """The chunks without what differs per request (id, created)."""
    out = []
    for c in chunks:
        d = c.model_dump(exclude_none=False)
        d.pop("id"), d.pop("created")
        out.append(d)
    return out


def _by_choice(shapes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chunks of each choice in their order, choice after choice: which of two choices that
    emit in one engine step comes first depends on the slots they took, which differ between servers
    whose caches hold different prompts."""
    return sorted(shapes, key=lambda d: d["choices"][0]["index"] if d["choices"] else 1 << 30)


def test_chat_stream_is_the_same_written_by_the_worker_as_relayed(direct: Server, relayed: Server) -> None:
    kw: dict[str, Any] = dict(
        model="smollm2", messages=MSG, max_tokens=40, temperature=0, n=2, logprobs=True, top_logprobs=2,
        stream=True, stream_options={"include_usage": True},
    )
    before, engine_before = _handed(direct), _engine_written(direct)
    got = _shapes(list(_client(direct).chat.completions.create(**kw)))
    want = _shapes(list(_client(relayed).chat.completions.create(**kw)))
    assert _by_choice(got) == _by_choice(want)
    roles = [c for c in got if c["choices"] and c["choices"][0]["delta"].get("role") == "assistant"]
    assert len(roles) == 2 and got[-1]["usage"]["completion_tokens"] > 0
    assert sum(1 for c in got if c["choices"] and c["choices"][0]["finish_reason"]) == 2
    assert _handed(direct) == before + 1  # the worker wrote it
    assert _handed(relayed) == 0  # the gateway relayed it
    # most of its deltas were written from the engine's thread, none of the relayed stream's
    assert _engine_written(direct) - engine_before >= got[-1]["usage"]["completion_tokens"] // 2
    assert _engine_written(relayed) == 0


def test_chats_go_to_the_worker_over_its_invoke_socket_or_else_over_http(direct: Server, direct_http: Server, relayed: Server) -> None:
    """On the worker's host a chat (streamed or whole) is sent over the invoke socket
    (``transport.lane``); without the socket it goes over HTTP, handed over the same, with the
    same chunks."""
    kw: dict[str, Any] = dict(model="smollm2", messages=MSG, max_tokens=40, temperature=0, stream=True)
    lane_before, handed_before = _worker_count(direct, "lane_streams_total"), _handed(direct)
    over_lane = _shapes(list(_client(direct).chat.completions.create(**kw)))
    whole = _client(direct).chat.completions.create(**{**kw, "stream": False})
    assert _worker_count(direct, "lane_streams_total") == lane_before + 2
    assert _handed(direct) == handed_before + 1
    http_handed_before = _handed(direct_http)
    over_http = _shapes(list(_client(direct_http).chat.completions.create(**kw)))
    assert _handed(direct_http) == http_handed_before + 1
    assert over_lane == over_http
    assert whole.choices[0].message.content == "".join(c["choices"][0]["delta"]["content"] or "" for c in over_lane if c["choices"])
    _client(relayed).chat.completions.create(**kw)
    assert _worker_count(direct_http, "lane_streams_total") == 0 == _worker_count(relayed, "lane_streams_total")


def test_a_stream_a_tool_parser_reads_is_written_by_the_loop_alone(direct: Server, relayed: Server) -> None:
    """A tool parser changes the deltas between the engine and the connection: none is written
    from the engine's thread, and the stream is the relayed one. Its connection is handed over
    after its first event, as the parser must see the text first."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    kw: dict[str, Any] = dict(model="smollm2", messages=MSG, max_tokens=40, temperature=0, tools=tools, stream=True)
    before, engine_before = _handed(direct), _engine_written(direct)
    early_before = _worker_count(direct, "handed_before_first_total")
    got = _shapes(list(_client(direct).chat.completions.create(**kw)))
    want = _shapes(list(_client(relayed).chat.completions.create(**kw)))
    assert got == want and len(got) > 3
    assert _handed(direct) == before + 1
    assert _engine_written(direct) == engine_before
    assert _worker_count(direct, "handed_before_first_total") == early_before


def test_a_plain_stream_is_handed_over_before_its_first_token_and_timed(direct: Server) -> None:
    """No parser: the worker answers as soon as the engine has the request, the gateway hands the
    connection over during the prefill and the engine's thread writes every token, the first too.
    The gateway still times the first token (``DeltaEvent.held`` in the worker's end): a number
    between zero and the whole stream's time."""
    ttft, e2e = _metric_sum(direct, "gpt_server_time_to_first_token_seconds"), _metric_sum(direct, "gpt_server_generation_seconds")
    early_before, engine_before = _worker_count(direct, "handed_before_first_total"), _engine_written(direct)
    chunks = list(_client(direct).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Write a long essay."}], max_tokens=64, temperature=0,
        logit_bias={"2": -100}, stream=True, stream_options={"include_usage": True},
    ))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 64 and text
    assert _worker_count(direct, "handed_before_first_total") == early_before + 1
    assert _engine_written(direct) - engine_before >= 32
    d_ttft = _metric_sum(direct, "gpt_server_time_to_first_token_seconds") - ttft
    d_e2e = _metric_sum(direct, "gpt_server_generation_seconds") - e2e
    assert 0 < d_ttft < d_e2e / 2, (d_ttft, d_e2e)


def test_completion_stream_is_the_same_written_by_the_worker_as_relayed(direct: Server, relayed: Server) -> None:
    kw: dict[str, Any] = dict(model="smollm2", prompt=["The sky is", "Grass is"], max_tokens=32, temperature=0, logprobs=2, stream=True)
    before = _handed(direct)
    engine_before = _engine_written(direct)
    got = _shapes(list(_client(direct).completions.create(**kw)))
    want = _shapes(list(_client(relayed).completions.create(**kw)))
    assert _by_choice(got) == _by_choice(want)
    assert _engine_written(direct) - engine_before >= 16  # offsets carried across both writers
    assert {c["choices"][0]["index"] for c in got} == {0, 1}
    assert all(c["choices"][0]["logprobs"]["text_offset"] is not None for c in got if c["choices"][0]["text"])
    assert _handed(direct) == before + 1


def test_the_connection_serves_the_clients_next_requests(direct: Server) -> None:
    """After a stream the worker wrote, the gateway ends the body and reads the next request on
    the same connection: streams and whole answers, one connection throughout."""
    body = {"model": "smollm2", "messages": MSG, "max_tokens": 32, "temperature": 0}
    peers = set()
    with httpx.Client(headers=direct.headers(), timeout=30, limits=httpx.Limits(max_connections=1)) as c:
        for stream in (True, False, True, True):
            if stream:
                with c.stream("POST", f"{direct.base_url}/v1/chat/completions", json={**body, "stream": True}) as r:
                    assert r.status_code == 200
                    lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
                    peers.add(r.extensions["network_stream"].get_extra_info("client_addr"))
                assert lines[-1] == "data: [DONE]"
                assert json.loads(lines[0][6:])["choices"][0]["delta"]["role"] == "assistant"
            else:
                r = c.post(f"{direct.base_url}/v1/chat/completions", json=body)
                assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
                peers.add(r.extensions["network_stream"].get_extra_info("client_addr"))
    assert len(peers) == 1, peers


def _read_response(f: Any) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response from the socket file ``f``: its status line and its de-chunked body."""
    status = f.readline()
    while f.readline() not in (b"\r\n", b""):
        pass
    body = b""
    while True:
        size = int(f.readline().strip(), 16)
        chunk = f.read(size + 2)
        assert chunk[-2:] == b"\r\n"
        if size == 0:
            return status, body
        body += chunk[:-2]


def _raw_chat(body: dict[str, Any], version: str = "1.1") -> bytes:
    """A chat request as it goes on the wire."""
    payload = json.dumps({"model": "smollm2", **body}).encode()
    return (
        f"POST /v1/chat/completions HTTP/{version}\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


def test_the_body_ends_once_and_the_next_response_follows(direct: Server) -> None:
    """On the wire: [DONE] and the body's last chunk in one piece (the worker wrote both), no
    second last chunk from the gateway, then the next request's response on the same socket."""
    request = _raw_chat({"messages": MSG, "max_tokens": 32, "temperature": 0, "stream": True})
    before = _handed(direct)
    with socket.create_connection(("127.0.0.1", direct.port), timeout=30) as s, s.makefile("rb") as f:
        for _ in range(2):
            s.sendall(request)
            status, body = _read_response(f)
            assert status.startswith(b"HTTP/1.1 200"), status
            assert body.endswith(b"data: [DONE]\n\n") and body.count(b"[DONE]") == 1
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert f.readline().startswith(b"HTTP/1.1 200")  # not the junk of a second last chunk
    assert _handed(direct) == before + 2


def test_an_http10_client_is_relayed(direct: Server) -> None:
    """Only HTTP/1.1 connections are handed over (the worker writes chunked bodies)."""
    before = _handed(direct)
    with socket.create_connection(("127.0.0.1", direct.port), timeout=30) as s:
        s.sendall(_raw_chat({"messages": MSG, "max_tokens": 32, "temperature": 0, "stream": True}, version="1.0"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status, _, body = data.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200"), status
    events = [ln for ln in body.split(b"\n") if ln.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]" and len(events) >= 3
    assert _handed(direct) == before


def test_a_stream_capped_at_a_few_tokens_is_relayed(direct: Server) -> None:
    """The hand-off's fixed cost does not pay on an answer of a handful of tokens."""
    from gpt_server.gateway.serving import HAND_OFF_MIN_TOKENS

    before = _handed(direct)
    kw: dict[str, Any] = dict(model="smollm2", messages=MSG, temperature=0, stream=True)
    chunks = list(_client(direct).chat.completions.create(**kw, max_tokens=HAND_OFF_MIN_TOKENS - 1))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert _handed(direct) == before
    list(_client(direct).chat.completions.create(**kw, max_completion_tokens=HAND_OFF_MIN_TOKENS))
    assert _handed(direct) == before + 1


def test_the_deadline_ends_a_handed_stream_with_the_timeout_error(direct: Server) -> None:
    body = {
        "model": "smollm2", "messages": [{"role": "user", "content": "Write a very long essay."}], "max_tokens": 2000,
        "stream": True, "temperature": 1.0, "logit_bias": {"2": -100},  # no end-of-turn token: only the deadline ends it
    }
    before = _handed(direct)
    with httpx.stream("POST", f"{direct.base_url}/v1/chat/completions", json=body, headers=direct.headers(), timeout=30) as r:
        events = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["code"] == "timeout" and err["type"] == "timeout_error", err
    assert f"within {TIMEOUT:g} seconds" in err["message"]
    assert len(events) > 10  # tokens came before it
    assert _handed(direct) == before + 1
    assert_workers_idle(direct)


def test_a_hang_up_stops_the_workers_generation(direct: Server) -> None:
    hang_up_long_stream(direct, "smollm2")
    assert_workers_idle(direct)
    r = _client(direct).chat.completions.create(model="smollm2", messages=MSG, max_tokens=4, temperature=0)
    assert r.choices[0].message.content


def test_a_bad_request_is_still_an_http_error(direct: Server) -> None:
    """What the worker refuses before its answer is the gateway's HTTP error, as always."""
    with pytest.raises(openai.BadRequestError):
        list(_client(direct).chat.completions.create(model="smollm2", messages=MSG, max_tokens=10**9, stream=True))


def test_the_worker_socket_is_advertised_only_to_the_internal_plane(direct: Server, tmp_path: Path) -> None:
    """The hand-off socket's path is in the worker's registration (the internal plane), not in
    anything an API client can read."""
    workers = direct.workers()
    assert workers and all(w["stream_socket"].startswith("/") for w in workers)
    for path in ("/v1/models", "/health"):
        text = httpx.get(f"{direct.base_url}{path}", headers=direct.headers(), timeout=10).text
        assert "stream_socket" not in text and "handoff" not in text


# ---- answers asked for whole ----------------------------------------------------------------


def _metric_sum(server: Server, name: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", headers=server.headers(), timeout=10).text
    m = re.search(rf'^{name}_sum\{{model="smollm2"\}} ([0-9.e+-]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _put_together(chunks: list[Any]) -> dict[int, dict[str, Any]]:
    """A chat stream's choices as whole messages: content, tool calls, logprobs, finish reason."""
    out: dict[int, dict[str, Any]] = {}
    for c in chunks:
        for ch in c.choices:
            o = out.setdefault(ch.index, {"content": "", "calls": {}, "logprobs": [], "finish": None})
            o["content"] += ch.delta.content or ""
            for tc in ch.delta.tool_calls or ():
                call = o["calls"].setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                call["id"] = tc.id or call["id"]
                call["name"] = (tc.function.name if tc.function else None) or call["name"]
                call["arguments"] += (tc.function.arguments if tc.function else None) or ""
            if ch.logprobs and ch.logprobs.content:
                o["logprobs"] += [lp.model_dump() for lp in ch.logprobs.content]
            o["finish"] = ch.finish_reason or o["finish"]
    return out


def test_a_whole_answer_equals_the_stream_put_together(direct: Server, relayed: Server) -> None:
    """n=2 with logprobs: one event a choice from the worker (most deltas kept on the engine
    thread), the same text, logprobs, finish reasons and usage as the relayed stream's tokens."""
    kw: dict[str, Any] = dict(model="smollm2", messages=MSG, max_tokens=40, temperature=0, n=2, logprobs=True, top_logprobs=2)
    engine_before = _engine_written(direct)
    whole = _client(direct).chat.completions.create(**kw)
    streamed = list(_client(relayed).chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    want = _put_together(streamed)
    assert len(whole.choices) == 2
    for ch in whole.choices:
        w = want[ch.index]
        assert ch.message.content == w["content"] and w["content"]
        assert ch.finish_reason == w["finish"]
        assert ch.logprobs is not None and [lp.model_dump() for lp in ch.logprobs.content or ()] == w["logprobs"]
    assert whole.usage is not None and streamed[-1].usage is not None
    assert whole.usage.completion_tokens == streamed[-1].usage.completion_tokens
    assert _engine_written(direct) - engine_before >= whole.usage.completion_tokens // 2


def test_a_whole_completion_equals_the_stream_put_together(direct: Server, relayed: Server) -> None:
    """Two prompts, logprobs with their text offsets."""
    kw: dict[str, Any] = dict(model="smollm2", prompt=["The sky is", "Grass is"], max_tokens=24, temperature=0, logprobs=2)
    whole = _client(direct).completions.create(**kw)
    streamed = list(_client(relayed).completions.create(**kw, stream=True))
    for ch in whole.choices:
        parts = [c.choices[0] for c in streamed if c.choices[0].index == ch.index]
        assert ch.text == "".join(p.text for p in parts) and ch.text
        assert ch.logprobs is not None
        assert ch.logprobs.tokens == [t for p in parts if p.logprobs for t in p.logprobs.tokens or ()]
        assert ch.logprobs.text_offset == [o for p in parts if p.logprobs for o in p.logprobs.text_offset or ()]
        assert ch.finish_reason == parts[-1].finish_reason


def _warm_grammar(server: Server, kw: dict[str, Any]) -> None:
    """The worker builds its grammar compiler at the first enforced request (~3 s on two loaded
    cores, against this module's 4 s deadline); the build goes on when that request times out."""
    for _ in range(5):
        try:
            _client(server).chat.completions.create(**kw)
            return
        except openai.InternalServerError as exc:
            assert exc.status_code == 504, exc
    raise AssertionError("the grammar compiler was not ready after five tries")


def test_a_whole_answer_a_tool_parser_reads_equals_the_stream_put_together(direct: Server) -> None:
    """Parsed deltas (tool calls) are gathered on the worker's loop, in order."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    kw: dict[str, Any] = dict(model="smollm2", messages=[{"role": "user", "content": "Weather in Paris?"}], max_tokens=48, temperature=0, tools=tools)
    _warm_grammar(direct, {**kw, "max_tokens": 1, "tool_choice": "required"})
    for choice in ("required", "auto"):
        whole = _client(direct).chat.completions.create(**kw, tool_choice=choice)
        want = _put_together(list(_client(direct).chat.completions.create(**kw, tool_choice=choice, stream=True)))[0]
        msg = whole.choices[0].message
        assert (msg.content or "") == want["content"]
        got_calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in msg.tool_calls or ()]
        assert [{**c, "id": None} for c in got_calls] == [{**want["calls"][i], "id": None} for i in sorted(want["calls"])]
        assert whole.choices[0].finish_reason == want["finish"]
        if choice == "required":
            assert got_calls and got_calls[0]["name"] == "get_weather"


def test_a_whole_answers_first_token_is_timed_as_it_came(direct: Server) -> None:
    """The gateway learns when a whole answer's first token came (``DeltaEvent.held``): its time
    to first token is not the whole answer's time."""
    ttft, e2e = _metric_sum(direct, "gpt_server_time_to_first_token_seconds"), _metric_sum(direct, "gpt_server_generation_seconds")
    r = _client(direct).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Write a long essay."}], max_tokens=64, temperature=0,
        logit_bias={"2": -100},  # no end-of-turn token: all 64 come
    )
    assert r.usage is not None and r.usage.completion_tokens == 64
    d_ttft = _metric_sum(direct, "gpt_server_time_to_first_token_seconds") - ttft
    d_e2e = _metric_sum(direct, "gpt_server_generation_seconds") - e2e
    assert 0 < d_ttft < d_e2e / 2, (d_ttft, d_e2e)


def test_the_deadline_ends_a_whole_answer_with_the_timeout_error(direct: Server) -> None:
    body = {
        "model": "smollm2", "messages": [{"role": "user", "content": "Write a very long essay."}], "max_tokens": 2000,
        "temperature": 1.0, "logit_bias": {"2": -100},
    }
    t0 = time.monotonic()
    r = httpx.post(f"{direct.base_url}/v1/chat/completions", json=body, headers=direct.headers(), timeout=30)
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text
    assert time.monotonic() - t0 < TIMEOUT + 2
    assert_workers_idle(direct)


def test_a_hang_up_stops_a_whole_answers_generation(direct: Server) -> None:
    """The worker sends nothing until the end, yet a client gone stops its engine at once."""
    request = _raw_chat({
        "messages": [{"role": "user", "content": "Write a very long essay."}], "max_tokens": 2000, "temperature": 1.0,
        "logit_bias": {"2": -100},
    })
    with socket.create_connection(("127.0.0.1", direct.port), timeout=30) as s:
        s.sendall(request)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the worker is generating
            infos = [httpx.get(f"{w['address']}/worker/info", headers=direct.internal_headers()).json() for w in direct.workers()]
            if sum(i["inflight"] for i in infos):
                break
            time.sleep(0.05)
        time.sleep(0.5)
    assert_workers_idle(direct, within=2.0)
