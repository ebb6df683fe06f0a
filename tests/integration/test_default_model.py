"""Requests without ``model`` (clients written for single-model servers) and the catch-all
alias ``*`` (clients that hard-code OpenAI names), with the openai SDK against a real server:
a llama.cpp chat model with alias ``*``, a second chat model marked ``default: true`` and a
sentence-transformers embedding model."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.embed_helpers import MINILM, entry
from tests.helpers import Server, base_config, served, smollm_entry

ECHO = {
    "echo-b": {
        "model_config": {"model_name_or_path": "echo"}, "work_mode": "echo", "device": "cpu", "default": True,
        "workers": [{"gpus": []}],
    }
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    chat = smollm_entry(n_threads=1)
    chat["smollm2"]["alias"] = "gpt-3.5-turbo,*"
    models = [chat, ECHO, entry("embed", MINILM, "embedding")]
    with served(base_config(models=models), tmp_path_factory.mktemp("default_model"), "default_model") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0, timeout=120)


def test_no_model_goes_to_the_default_or_the_only_model(server: Server, client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert r.model == "echo-b"  # marked default among the two chat models
    raw = httpx.post(f"{server.base_url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}, timeout=60)
    assert raw.status_code == 200 and raw.json()["model"] == "echo-b"
    e = httpx.post(f"{server.base_url}/v1/embeddings", json={"input": "hello"}, timeout=60)
    assert e.status_code == 200 and e.json()["model"] == "embed"  # the only embedding model
    t = httpx.post(f"{server.base_url}/v1/tokenize", json={"prompt": "hello world"}, timeout=60)
    assert t.status_code == 200, t.text  # the only model that tokenizes (echo does not)
    none = httpx.post(f"{server.base_url}/v1/rerank", json={"query": "q", "documents": ["a"]}, timeout=60)
    assert none.status_code == 404 and none.json()["error"]["param"] == "model"
    assert "rerank" in none.json()["error"]["message"]


def test_unknown_names_go_to_the_catch_all_of_their_capability(client: openai.OpenAI) -> None:
    c = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="The sky is", max_tokens=3)
    assert c.model == "smollm2" and c.choices[0].text
    r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert r.model == "smollm2"
    with pytest.raises(openai.NotFoundError) as ei:  # no catch-all among embedding models
        client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert ei.value.body["param"] == "model"
    assert "*" not in {m.id for m in client.models.list().data}
