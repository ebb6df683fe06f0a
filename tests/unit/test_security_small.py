"""Small hardening items, each checked where it lives: request keys, config keys, worker
registration bounds and dependency floors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from gpt_server.config import ConfigError, parse_config
from gpt_server.protocol.openai import ChatCompletionRequest
from gpt_server.protocol.worker import WorkerInfo

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("key", ["--5", "²", "٣", "+5", " 5", "1_0", "-3", "12345678901"])
def test_logit_bias_keys_are_ascii_token_ids(key: str) -> None:
    with pytest.raises(ValidationError, match="not a token id"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}], "logit_bias": {key: 1}})
    ok = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"42": 1}})
    assert ok.logit_bias == {"42": 1}


def test_blank_api_keys_are_refused() -> None:
    for keys in (["", "k"], ["k", "  "]):
        with pytest.raises(ConfigError, match="serve_args.api_keys: a key is empty or blank"):
            parse_config({"serve_args": {"api_keys": keys}, "models": []})
    assert parse_config({"serve_args": {"api_keys": "a, ,b"}, "models": []}).serve_args.api_keys == ["a", "b"]


def test_worker_registration_is_bounded() -> None:
    base = {"worker_id": "m-0-abc", "address": "http://10.0.0.5:4123", "model_name": "m", "capacity": 4}
    WorkerInfo.model_validate(base)
    WorkerInfo.model_validate({**base, "address": "inproc://123/m-0"})
    for bad in ({"capacity": 1_000_000}, {"heartbeat_interval": 0}, {"heartbeat_interval": 1e9},
                {"address": "ftp://x"}, {"address": "http://x/y z"}, {"address": "http://" + "a" * 600},
                {"aliases": ["a"] * 100}, {"worker_id": "x" * 300}, {"replica": -1}):
        with pytest.raises(ValidationError):
            WorkerInfo.model_validate({**base, **bad})


def test_dependency_floors_exclude_known_vulnerable_releases() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]

    def floor(name: str) -> tuple[int, ...]:
        spec = next(d for d in deps if re.match(rf"{name}\s*[<>=]", d))
        m = re.search(r">=\s*([0-9.]+)", spec)
        assert m, f"{name} has no minimum version"
        return tuple(int(x) for x in m.group(1).split("."))

    assert floor("python-multipart") >= (0, 0, 20)
    assert floor("starlette") >= (0, 49, 1)


def test_content_parts_and_tool_calls_are_bounded() -> None:
    """Every count a request sets has a bound: content parts per message and per request,
    tool calls per message (an 18 MiB body of 150k tiny parts stalled the gateway's loop)."""
    from pydantic import ValidationError

    from gpt_server.protocol.openai import LIMITS, ChatCompletionRequest

    part = {"type": "text", "text": "x"}
    ok = {"model": "m", "messages": [{"role": "user", "content": [part] * LIMITS.max_content_parts}]}
    ChatCompletionRequest.model_validate(ok)
    with pytest.raises(ValidationError, match="content"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": [part] * (LIMITS.max_content_parts + 1)}]})
    many = [{"role": "user", "content": [part] * LIMITS.max_content_parts}] * (LIMITS.max_request_parts // LIMITS.max_content_parts + 1)
    with pytest.raises(ValidationError, match="content parts in all messages"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": many})
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    with pytest.raises(ValidationError, match="tool_calls"):
        ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "assistant", "tool_calls": [call] * (LIMITS.max_message_tool_calls + 1)}]}
        )


def test_precheck_refuses_huge_part_counts_before_validation() -> None:
    from gpt_server.errors import BadRequestError
    from gpt_server.protocol.openai import LIMITS, ChatCompletionRequest

    part = {"type": "text", "text": "x"}
    ChatCompletionRequest.precheck({"messages": [{"role": "user", "content": [part] * 10}]})
    ChatCompletionRequest.precheck(None)  # not JSON: validation names the error
    with pytest.raises(BadRequestError) as ei:
        ChatCompletionRequest.precheck({"messages": [{"role": "user", "content": [part] * 100}] * (LIMITS.max_request_parts // 100 + 1)})
    assert ei.value.param == "messages"
    with pytest.raises(BadRequestError):
        ChatCompletionRequest.precheck({"messages": [{}] * (LIMITS.max_messages + 1)})
