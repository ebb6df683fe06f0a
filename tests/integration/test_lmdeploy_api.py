"""LMDeploy api_server's routes (``/v1/chat/interactive`` sessions, ``/generate``) on two
replicas of the packaged SmolLM2 (llama.cpp), in LMDeploy's request and response shapes
driven with httpx; a session's turns stay on one replica (dispatch affinity) and move to
the other when theirs dies."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import Server, base_config, served, smollm_entry

KEY_A, KEY_B = "sk-lmd-a", "sk-lmd-b"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
GREEDY = {"temperature": 0, "seed": 3}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # round robin: without affinity, consecutive requests alternate between the replicas
    cfg = base_config(api_keys=f"{KEY_A},{KEY_B}", dispatch="round_robin", models=[smollm_entry(replicas=2)])
    with served(cfg, tmp_path_factory.mktemp("lmdeploy"), "lmdeploy_api", 2) as srv:
        yield srv


def _post(server: Server, path: str, body: dict[str, Any], headers: dict[str, str] = A) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, headers=headers, timeout=120)


def _turn(server: Server, sid: int, prompt: Any, headers: dict[str, str] = A, **kw: Any) -> dict[str, Any]:
    body = {"prompt": prompt, "session_id": sid, "interactive_mode": True, "request_output_len": 8, **GREEDY, **kw}
    r = _post(server, "/v1/chat/interactive", body, headers)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    assert set(out) == {"text", "tokens", "input_tokens", "history_tokens", "finish_reason"}
    return out


def _dispatched(server: Server) -> dict[str, int]:
    return {w["worker_id"]: w["dispatched_total"] for w in server.workers()}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {w: n - before.get(w, 0) for w, n in after.items() if n - before.get(w, 0)}


def test_session_keeps_history_and_stays_on_one_replica(server: Server) -> None:
    before = _dispatched(server)
    turns = [_turn(server, 11, f"Remember the number {n}. Say ok.") for n in (3, 5, 7, 9)]
    moved = _delta(before, _dispatched(server))
    assert len(moved) == 1 and list(moved.values()) == [4], moved  # all four turns on one replica
    assert turns[0]["history_tokens"] == 0
    for prev, cur in zip(turns, turns[1:], strict=False):
        # the history is the previous turn's prompt and answer, and grows
        assert cur["history_tokens"] == prev["history_tokens"] + prev["input_tokens"] + prev["tokens"]
        assert cur["input_tokens"] > 0 and cur["tokens"] == 8 and cur["finish_reason"] == "length"
    # the history is the conversation: the same answer as a stateless chat carrying it
    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY_A, max_retries=0, timeout=120)
    msgs: list[Any] = []
    for n, t in zip((3, 5, 7), turns, strict=False):
        msgs += [{"role": "user", "content": f"Remember the number {n}. Say ok."}, {"role": "assistant", "content": t["text"]}]
    msgs.append({"role": "user", "content": "Remember the number 9. Say ok."})
    ref = oai.chat.completions.create(model="smollm2", messages=msgs, max_tokens=8, **GREEDY)  # type: ignore[arg-type]
    assert ref.choices[0].message.content == turns[3]["text"]
    # interactive_mode false: served with the history, then the session ends
    last = _post(server, "/v1/chat/interactive", {"prompt": "Bye.", "session_id": 11, "interactive_mode": False, "request_output_len": 4}).json()
    assert last["history_tokens"] > turns[3]["history_tokens"]
    assert _turn(server, 11, "Hello again.")["history_tokens"] == 0


def test_messages_prompt_stream_lines_equal_the_whole_answer(server: Server) -> None:
    # one session id (not kept: interactive_mode false) keeps both on one replica
    body = {"prompt": [{"role": "user", "content": "Name a colour."}], "session_id": 51, "request_output_len": 6, **GREEDY}
    whole = _post(server, "/v1/chat/interactive", body).json()
    with httpx.stream("POST", f"{server.base_url}/v1/chat/interactive", json={**body, "stream": True}, headers=A, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert len(lines) > 2 and all(line["finish_reason"] is None for line in lines[:-1])
    assert "".join(line["text"] for line in lines) == whole["text"]
    assert lines[-1]["finish_reason"] == "length" and lines[-1]["tokens"] == 6 == whole["tokens"]
    assert lines[-1]["input_tokens"] == whole["input_tokens"] > 0


def test_sessions_are_per_api_key(server: Server) -> None:
    _turn(server, 21, "My name is Ann.")
    second = _turn(server, 21, "What is my name?")
    assert second["history_tokens"] > 0
    other = _turn(server, 21, "What is my name?", headers=B)  # another key: another session
    assert other["history_tokens"] == 0
    end = _post(server, "/v1/chat/interactive", {"prompt": "", "session_id": 21, "interactive_mode": False, "request_output_len": 0})
    assert end.json() == {"text": "", "tokens": 0, "input_tokens": 0, "history_tokens": 0, "finish_reason": "stop"}
    assert _turn(server, 21, "Hi.")["history_tokens"] == 0  # key A's session 21 ended


def test_busy_session_is_409_and_cancel_stops_its_turn(server: Server) -> None:
    # greedy, a long story: the turn runs for a while (hundreds of tokens)
    prompt = "Write a very long story about a dragon who lives in a castle, with many chapters."
    body = {"prompt": prompt, "session_id": 31, "interactive_mode": True, "request_output_len": 1000, "stream": True, **GREEDY}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/interactive", json=body, headers=A, timeout=120) as r:
        it = r.iter_lines()
        assert json.loads(next(it))["finish_reason"] is None  # the turn is running
        busy = _post(server, "/v1/chat/interactive", {**body, "stream": False, "request_output_len": 2})
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "session_busy"
        t0 = time.monotonic()
        cancel = _post(server, "/v1/chat/interactive", {"prompt": "", "session_id": 31, "cancel": True})
        assert cancel.status_code == 200 and cancel.json()["tokens"] == 0
        rest = [line for line in it if line]
        assert time.monotonic() - t0 < 20 and len(rest) < 990
    assert _turn(server, 31, "Hi.")["history_tokens"] == 0  # not busy any more; the cancelled turn left no history


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x", "ignore_eos": True}, "ignore_eos"),
        ({"prompt": "x", "session_id": -2}, "session_id"),
        ({"prompt": "x", "request_output_len": 10**9}, "request_output_len"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "stop": ["a"] * 100}, "stop"),
        ({"prompt": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"prompt": "", "cancel": True}, "session_id"),
        ({"session_id": 3}, "prompt"),
    ],
)
def test_bad_interactive_requests_are_openai_errors(server: Server, body: dict[str, Any], param: str) -> None:
    r = _post(server, "/v1/chat/interactive", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and param in (err["param"] or "") + err["message"], err


def test_generate_prompt_and_input_ids(server: Server) -> None:
    body = {"prompt": "The capital of France is", "max_tokens": 6, **GREEDY}
    r = _post(server, "/generate", body)
    assert r.status_code == 200, r.text
    out = r.json()
    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY_A, max_retries=0, timeout=120)
    ref = oai.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=6, temperature=0, seed=3)
    assert out["text"] == ref.choices[0].text
    assert out["meta_info"]["completion_tokens"] == 6 and out["meta_info"]["finish_reason"] == {"type": "length"}
    assert out["meta_info"]["prompt_tokens"] == ref.usage.prompt_tokens  # type: ignore[union-attr]
    detok = _post(server, "/detokenize", {"model": "smollm2", "tokens": out["output_ids"]}).json()
    assert detok["prompt"] == out["text"] and len(out["output_ids"]) > 0
    ids = _post(server, "/tokenize", {"model": "smollm2", "prompt": "The capital of France is", "add_special_tokens": False}).json()["tokens"]
    by_ids = _post(server, "/generate", {"input_ids": ids, "max_tokens": 6, **GREEDY}).json()
    assert by_ids["text"] == out["text"]
    with httpx.stream("POST", f"{server.base_url}/generate", json={**body, "stream": True}, headers=A, timeout=120) as s:
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["text"] for c in chunks) == out["text"]
    assert [i for c in chunks for i in c["output_ids"]] == out["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "length"}
    both = _post(server, "/generate", {"prompt": "x", "input_ids": [1]})
    assert both.status_code == 400 and "exactly one" in both.json()["error"]["message"]


def test_dead_replica_re_pins_the_session(server: Server) -> None:
    """Last in the module: it kills a replica (the launcher restarts it)."""
    before = _dispatched(server)
    _turn(server, 41, "Remember: blue.")
    first = _delta(before, _dispatched(server))
    (victim,) = first
    pid = next(w["pid"] for w in server.workers() if w["worker_id"] == victim)
    os.kill(pid, signal.SIGKILL)
    before = _dispatched(server)
    turns = [_turn(server, 41, f"Turn {n}.") for n in range(3)]
    assert turns[0]["history_tokens"] > 0  # the history is the gateway's: it survives the replica
    moved = _delta(before, _dispatched(server))
    moved.pop(victim, None)  # a dispatch to the dead one before it was noticed is retried elsewhere
    assert len(moved) == 1 and list(moved.values()) == [3], moved  # re-pinned to the survivor, and kept there
