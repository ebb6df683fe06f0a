"""/tokenize and /detokenize (vLLM's shapes) on a real server, driven with httpx.

One server holds SmolLM2-135M-Instruct on llama.cpp (the packaged GGUF) and on transformers
(the same weights as a Hugging Face directory), the same directory as ``work_mode: vllm``
(the engine's server played by ``vllm_tokenize_stub.py``: vLLM's root routes on the model's
tokenizer, so the relay's paths, body and key are what is checked), plus a remote OpenAI
upstream (never called) that offers neither capability. A messages ``count`` must equal the ``usage.prompt_tokens``
a real chat completion of the same messages is billed.
"""

from __future__ import annotations

import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import Server, base_config, served, smollm_entry
from tests.hf_helpers import hf_entry, smollm_hf_dir

ENGINES = ["llama", "hf"]
UPSTREAM = "remote"  # work_mode openai: no /tokenize to relay to
RELAYED = "vllm"
STUB = Path(__file__).with_name("vllm_tokenize_stub.py")
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colors, héhé 🎨."},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("tokenize")
    python = tmp / "vllm-python"
    # the stand-in engine virtualenv: start-up's check that it can import vllm (`-c ...`) passes,
    # and `-m vllm.entrypoints...` runs the stub server
    python.write_text(f'#!/bin/sh\nif [ "$1" = "-c" ]; then exit 0; fi\nexec {sys.executable} {STUB} "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    relayed = {
        "model_config": {"model_name_or_path": str(smollm_hf_dir()), "python": str(python), "max_model_len": 2048, "startup_timeout": 90},
        "work_mode": "vllm",
        "device": "cpu",
        "workers": [{"gpus": []}],
    }
    models = [
        smollm_entry("llama", n_threads=1, n_parallel=2),
        hf_entry("hf", smollm_hf_dir(), n_parallel=2),
        {RELAYED: relayed},
        {UPSTREAM: {"model_config": {"model_name_or_path": "m", "api_base": "http://127.0.0.1:9/v1"}, "work_mode": "openai", "workers": [{"gpus": []}]}},
    ]
    with served(base_config(models=models), tmp, "tokenize", 4) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=server.headers(), timeout=120) as c:
        yield c


def _ok(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = http.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _error(http: httpx.Client, path: str, body: dict[str, Any], status: int = 400) -> dict[str, Any]:
    r = http.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    return err


@pytest.mark.parametrize("model", ENGINES)
def test_round_trip(http: httpx.Client, model: str) -> None:
    text = "Hello, world! Ünïcode and emoji 🎨 survive."
    tok = _ok(http, "/tokenize", {"model": model, "prompt": text})
    assert tok["count"] == len(tok["tokens"]) > 5
    assert tok["max_model_len"] and tok["max_model_len"] >= 1024
    assert "token_strs" not in tok
    back = _ok(http, "/detokenize", {"model": model, "tokens": tok["tokens"]})
    assert back == {"prompt": text}
    # the /v1 spelling is the same route
    assert _ok(http, "/v1/tokenize", {"model": model, "prompt": text})["tokens"] == tok["tokens"]
    assert _ok(http, "/v1/detokenize", {"model": model, "tokens": tok["tokens"]}) == back
    assert _ok(http, "/detokenize", {"model": model, "tokens": []}) == {"prompt": ""}


def test_both_engines_agree(http: httpx.Client) -> None:
    """The GGUF and the Hugging Face copy of one model share one vocabulary."""
    text = "The quick brown fox jumps over the lazy dog."
    llama, hf = (_ok(http, "/tokenize", {"model": m, "prompt": text, "return_token_strs": True}) for m in ENGINES)
    assert llama["tokens"] == hf["tokens"]
    assert llama["token_strs"] == hf["token_strs"]
    assert len(hf["token_strs"]) == hf["count"] and hf["token_strs"][1] == "Ġquick"


@pytest.mark.parametrize("model", ENGINES)
def test_messages_count_is_chat_prompt_tokens(http: httpx.Client, model: str) -> None:
    counts = []
    for extra in ({}, {"tools": TOOLS}):
        chat = _ok(http, "/v1/chat/completions", {"model": model, "messages": MESSAGES, "max_tokens": 1, **extra})
        tok = _ok(http, "/tokenize", {"model": model, "messages": MESSAGES, **extra})
        assert tok["count"] == chat["usage"]["prompt_tokens"], extra
        counts.append(tok["count"])
    assert counts[1] > counts[0] + 20  # the tools are described in the prompt
    tok = _ok(http, "/tokenize", {"model": model, "messages": MESSAGES, "return_token_strs": True})
    text = _ok(http, "/detokenize", {"model": model, "tokens": tok["tokens"]})["prompt"]
    # special tokens are written out; the prompt ends with the assistant turn's header
    assert text.startswith("<|im_start|>system\nYou are terse.") and text.endswith("<|im_start|>assistant\n")
    assert tok["token_strs"][0] == "<|im_start|>"
    bare = _ok(http, "/tokenize", {"model": model, "messages": MESSAGES, "add_generation_prompt": False})
    assert bare["tokens"] == tok["tokens"][: bare["count"]] and bare["count"] < tok["count"]


@pytest.mark.parametrize("model", ENGINES)
def test_bad_token_ids(http: httpx.Client, model: str) -> None:
    err = _error(http, "/detokenize", {"model": model, "tokens": [1, 2, 10_000_000]})
    assert err["param"] == "tokens" and "vocabulary" in err["message"]
    err = _error(http, "/detokenize", {"model": model, "tokens": [1, -5]})
    assert err["param"] == "tokens" and "negative" in err["message"]
    err = _error(http, "/detokenize", {"model": model, "tokens": [1, "2"]})
    assert err["param"].startswith("tokens")


def test_bounds_and_shape_errors(http: httpx.Client) -> None:
    err = _error(http, "/tokenize", {"model": "llama", "prompt": "x" * 1_000_001})
    assert err["param"] == "prompt"
    err = _error(http, "/detokenize", {"model": "llama", "tokens": [1] * 262_145})
    assert err["param"] == "tokens"
    msgs = [{"role": "user", "content": "hi"}] * 2049
    assert _error(http, "/tokenize", {"model": "llama", "messages": msgs})["param"] == "messages"
    assert _error(http, "/tokenize", {"model": "llama"})["param"] == "prompt"
    both = {"model": "llama", "prompt": "a", "messages": MESSAGES}
    assert _error(http, "/tokenize", both)["param"] == "messages"
    assert _error(http, "/tokenize", {"model": "llama", "prompt": "a", "tools": TOOLS})["param"] == "tools"
    reserved = {"model": "hf", "messages": MESSAGES, "chat_template_kwargs": {"bos_token": "x"}}
    assert _error(http, "/tokenize", reserved)["param"] == "chat_template_kwargs"
    assert _error(http, "/tokenize", {"model": "llama", "prompt": 5})["param"] == "prompt"


def test_relayed_to_the_engines_own_routes(http: httpx.Client) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    relayed = _ok(http, "/v1/tokenize", {"model": RELAYED, "prompt": text, "return_token_strs": True})
    local = _ok(http, "/tokenize", {"model": "hf", "prompt": text, "return_token_strs": True})
    assert relayed["tokens"] == local["tokens"] and relayed["token_strs"] == local["token_strs"]
    assert relayed["count"] == local["count"] and relayed["max_model_len"] == 2048
    assert _ok(http, "/detokenize", {"model": RELAYED, "tokens": relayed["tokens"]}) == {"prompt": text}
    relayed = _ok(http, "/tokenize", {"model": RELAYED, "messages": MESSAGES, "add_generation_prompt": False})
    local = _ok(http, "/tokenize", {"model": "hf", "messages": MESSAGES, "add_generation_prompt": False})
    assert relayed["tokens"] == local["tokens"]
    err = _error(http, "/detokenize", {"model": RELAYED, "tokens": [49_152]})
    assert "vocabulary" in err["message"]


def test_unknown_model_and_unsupported_kind(http: httpx.Client) -> None:
    err = _error(http, "/tokenize", {"model": "no-such-model", "prompt": "hi"}, status=404)
    assert err["param"] == "model"
    err = _error(http, "/tokenize", {"model": UPSTREAM, "prompt": "hi"})
    assert err["param"] == "model" and "does not support tokenize" in err["message"]
    err = _error(http, "/detokenize", {"model": UPSTREAM, "tokens": [1]})
    assert "does not support detokenize" in err["message"]


def test_model_cards_list_the_capabilities(http: httpx.Client) -> None:
    r = http.get("/v1/models")
    assert r.status_code == 200
    caps = {m["id"]: set(m["capabilities"]) for m in r.json()["data"]}
    for model in [*ENGINES, RELAYED]:
        assert {"chat", "completion", "tokenize", "detokenize"} <= caps[model]
    assert not {"tokenize", "detokenize"} & caps[UPSTREAM]
