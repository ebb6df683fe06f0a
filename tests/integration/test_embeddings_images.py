"""Image inputs of POST /v1/embeddings: a tiny random CLIP (built here with transformers, served
by work_mode sentence_transformers) embeds text and images into one space, in Jina's ``input``
items and vLLM's ``messages``; the packaged MiniLM (text only) refuses images. One server holds
three models: ``clip`` (may fetch from 127.0.0.1, where the test's image server is),
``clip-strict`` (public hosts only) and ``minilm`` (the default embedding model).

No package here ships a real CLIP (see MODELS.md), so the vectors are checked against
sentence-transformers' own ``encode`` of the same model in this process."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.embed_helpers import MINILM, entry, tiny_clip_dir
from tests.helpers import Server, base_config, served
from tests.media_helpers import bomb_png

TEXTS = ["the cat sits on the mat", "a photo of a dog"]
MAX_MEDIA_BYTES = 200_000


def _png(seed: int, size: tuple[int, int]) -> bytes:
    from PIL import Image

    pixels = (np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


PNG_A = _png(1, (50, 40))
PNG_B = _png(2, (33, 61))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + b64(data)


def rgb(data: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


class _Images(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        body = PNG_A if self.path.startswith("/a.png") else PNG_B
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def images_url() -> Iterator[str]:
    """A local HTTP server of the test images (``/a.png``, ``/b.png``); ``_Images.hits`` lists its requests."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    clip = str(tiny_clip_dir())
    minilm = entry("minilm", MINILM, "embedding", n_threads=1)
    minilm["minilm"]["default"] = True
    models = [
        entry("clip", clip, "embedding", n_threads=1, allow_private_media_urls=True,
              max_media_bytes=MAX_MEDIA_BYTES, matryoshka_dims=[8]),
        entry("clip-strict", clip, "embedding", n_threads=1),
        minilm,
    ]
    with served(base_config(models=models), tmp_path_factory.mktemp("embed-images"), "embed_images") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def ref() -> Any:
    """The same CLIP through sentence-transformers in this process (texts cut at the text
    tower's 64 positions, as the server does)."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    model = SentenceTransformer(str(tiny_clip_dir()), device="cpu")
    model.max_seq_length = 64
    return model


def vectors(resp: Any) -> np.ndarray:
    return np.array([d.embedding for d in sorted(resp.data, key=lambda d: d.index)], dtype=np.float32)


def post(server: Server, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/embeddings", json=body, timeout=60)


def float_vectors(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])], dtype=np.float32)


def assert_400(r: httpx.Response, param: str, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err
    if code is not None:
        assert err["code"] == code, err
    return err


def test_text_and_image_vectors_share_one_space_and_match_sentence_transformers(client: openai.OpenAI, ref: Any) -> None:
    resp = client.embeddings.create(
        model="clip",
        input=[TEXTS[0], {"image": data_url(PNG_A)}, {"text": TEXTS[1]}, {"image": b64(PNG_B)}],  # type: ignore[list-item]
    )
    got = vectors(resp)  # the SDK asked for base64
    assert got.shape == (4, 16)
    np.testing.assert_allclose(got[[0, 2]], ref.encode(TEXTS), atol=1e-5)
    np.testing.assert_allclose(got[[1, 3]], ref.encode([rgb(PNG_A), rgb(PNG_B)]), atol=1e-5)
    # usage counts the texts' tokens; an image counts none
    text_tokens = sum(len(ref.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == text_tokens


def test_an_image_has_one_vector_alone_twice_and_within_a_batch(client: openai.OpenAI) -> None:
    alone = vectors(client.embeddings.create(model="clip", input=[{"image": data_url(PNG_A)}]))  # type: ignore[list-item]
    twice = vectors(client.embeddings.create(model="clip", input=[{"image": data_url(PNG_A)}] * 2))  # type: ignore[list-item]
    mixed = vectors(client.embeddings.create(
        model="clip", input=["red", {"image": b64(PNG_B)}, {"image": data_url(PNG_A)}, TEXTS[0]],  # type: ignore[list-item]
    ))
    np.testing.assert_array_equal(twice[0], twice[1])
    np.testing.assert_allclose(twice[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(mixed[2], alone[0], atol=1e-5)
    text_alone = vectors(client.embeddings.create(model="clip", input=TEXTS[0]))
    np.testing.assert_allclose(mixed[3], text_alone[0], atol=1e-5)


def test_data_url_bare_base64_and_http_url_give_one_vector(server: Server, images_url: str) -> None:
    before = len(_Images.hits)
    got = float_vectors(post(server, {
        "model": "clip", "encoding_format": "float",
        "input": [{"image": data_url(PNG_A)}, {"image": b64(PNG_A)}, {"image": f"{images_url}/a.png"}],
    }))
    assert _Images.hits[before:] == ["/a.png"]
    np.testing.assert_allclose(got[1], got[0], atol=1e-6)
    np.testing.assert_allclose(got[2], got[0], atol=1e-6)


def test_vllm_messages_give_one_embedding_of_their_image_or_text(server: Server, images_url: str, ref: Any) -> None:
    def message(*parts: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": list(parts)}]

    image = {"type": "image_url", "image_url": {"url": f"{images_url}/b.png"}}
    r = post(server, {"model": "clip", "messages": message(image), "encoding_format": "float"})
    got = float_vectors(r)
    assert got.shape == (1, 16) and r.json()["usage"]["prompt_tokens"] == 0
    np.testing.assert_allclose(got[0], ref.encode([rgb(PNG_B)])[0], atol=1e-5)
    # text: a string content, or text parts joined by newlines
    plain = float_vectors(post(server, {"model": "clip", "messages": [{"role": "user", "content": TEXTS[1]}], "encoding_format": "float"}))
    np.testing.assert_allclose(plain[0], ref.encode([TEXTS[1]])[0], atol=1e-5)
    parts = message({"type": "text", "text": "a photo"}, {"type": "text", "text": "of a dog"})
    joined = float_vectors(post(server, {"model": "clip", "messages": parts, "encoding_format": "float"}))
    np.testing.assert_allclose(joined[0], ref.encode(["a photo\nof a dog"])[0], atol=1e-5)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        # CLIP embeds text and images apart: one input holding both is refused, saying why
        ({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "a cat"}, {"type": "image_url", "image_url": {"url": data_url(PNG_A)}}]}]},
         "messages[0]", "unsupported_input"),
        ({"input": ["x", {"text": "a cat", "image": data_url(PNG_A)}]}, "input[1]", "unsupported_input"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(PNG_A)}},
            {"type": "image_url", "image_url": {"url": data_url(PNG_B)}}]}]},
         "messages[0].content[1].image_url", None),
        ({"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]}, "messages[0].content[0].type", None),
        ({"messages": [{"role": "user", "content": "x"}], "input": "x"}, "messages", None),
        ({"messages": []}, "messages", None),
        ({"input": [{"image": 3}]}, "input[0].image", None),
        ({"input": ["ok", {"image": ""}]}, "input[1].image", None),
        ({"input": [{"picture": "x"}]}, "input[0]", None),
        ({"input": [{"text": 3}]}, "input[0].text", None),
        ({"input": ["ok", {"image": "not base64 at all!"}]}, "input[1].image", "invalid_image"),
        ({"input": [{"image": b64(b"hello, not an image")}]}, "input[0].image", "invalid_image"),
        ({"input": [{"image": "file:///etc/passwd"}]}, "input[0].image", "invalid_media_url"),
        ({"input": [{"image": "data:image/png;base64," + b64(bytes(MAX_MEDIA_BYTES + 1))}]}, "input[0].image", "invalid_media_url"),
        ({"input": ["ok", {"image": bomb_png()}]}, "input[1].image", "invalid_image"),
        ({"input": [{"image": data_url(PNG_A)}] * 65}, "input[64].image", None),
    ],
    ids=["message-mixes", "item-mixes", "two-images", "audio-part", "both-shapes", "no-messages", "not-a-string",
         "empty", "unknown-key", "text-not-a-string", "not-base64", "not-an-image", "file-url", "too-large", "bomb",
         "too-many"],
)
def test_bad_image_inputs_are_400_naming_the_input(server: Server, body: dict[str, Any], param: str, code: str | None) -> None:
    err = assert_400(post(server, {"model": "clip", **body}), param, code)
    if code == "unsupported_input":
        assert "apart" in err["message"]


def test_a_private_url_needs_the_allowance(server: Server, images_url: str) -> None:
    before = len(_Images.hits)
    r = post(server, {"model": "clip-strict", "input": ["x", {"image": f"{images_url}/a.png"}]})
    err = assert_400(r, "input[1].image", "invalid_media_url")
    assert "non-public" in err["message"] and len(_Images.hits) == before
    r = post(server, {"model": "clip-strict", "input": [{"image": data_url(PNG_A)}]})  # inline images need no fetch
    assert r.status_code == 200, r.text


def test_a_text_only_model_refuses_images(server: Server, client: openai.OpenAI) -> None:
    err = assert_400(post(server, {"model": "minilm", "input": ["a cat", {"image": data_url(PNG_A)}]}), "input", "unsupported_input")
    assert "text only" in err["message"] and "input[1].image" in err["message"]
    image = {"type": "image_url", "image_url": {"url": data_url(PNG_A)}}
    assert_400(post(server, {"model": "minilm", "messages": [{"role": "user", "content": [image]}]}), "messages", "unsupported_input")
    # its texts are welcome in either shape
    items = vectors(client.embeddings.create(model="minilm", input=[{"text": "a cat"}, "a cat"]))  # type: ignore[list-item]
    np.testing.assert_allclose(items[0], items[1], atol=1e-6)


def test_text_that_names_an_image_is_embedded_as_text(server: Server, images_url: str, ref: Any, tmp_path: Path) -> None:
    """sentence-transformers reads a string that looks like an image URL or path as that image;
    the server embeds what the client sent as text, as text (no fetch, no file read)."""
    local = tmp_path / "a.png"
    local.write_bytes(PNG_A)
    texts = [f"{images_url}/a.png", str(local), "data:image/png;base64," + b64(PNG_A)[:40]]
    before = len(_Images.hits)
    got = float_vectors(post(server, {"model": "clip", "input": texts, "encoding_format": "float"}))
    assert len(_Images.hits) == before
    np.testing.assert_allclose(got, ref.encode([{"text": t} for t in texts]), atol=1e-5)


def test_a_long_text_is_cut_to_the_text_towers_positions(client: openai.OpenAI, ref: Any) -> None:
    long = "the cat sits on the mat " * 40  # ~240 tokens; the tiny CLIP has 64 positions
    got = vectors(client.embeddings.create(model="clip", input=[long, {"image": b64(PNG_A)}]))  # type: ignore[list-item]
    np.testing.assert_allclose(got[0], ref.encode([long])[0], atol=1e-5)


def test_dimensions_and_formats_apply_to_images(server: Server, client: openai.OpenAI) -> None:
    inputs = [{"image": b64(PNG_A)}, TEXTS[0]]
    full = float_vectors(post(server, {"model": "clip", "input": inputs, "encoding_format": "float"}))
    short = float_vectors(post(server, {"model": "clip", "input": inputs, "encoding_format": "float", "dimensions": 8}))
    want = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(short, want, atol=1e-6)
    b64_short = vectors(client.embeddings.create(model="clip", input=inputs, dimensions=8))  # type: ignore[arg-type]
    np.testing.assert_array_equal(b64_short, short)
    assert_400(post(server, {"model": "clip", "input": inputs, "dimensions": 4}), "dimensions", "unsupported_dimensions")


def test_models_that_embed_images_say_so_and_take_requests_without_a_name(server: Server) -> None:
    models = {m["id"]: m for m in httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"]}
    assert "embed_image" in models["clip"]["capabilities"] and "embed_image" in models["clip-strict"]["capabilities"]
    assert "embed_image" not in models["minilm"]["capabilities"]
    text = post(server, {"input": "a cat"})
    assert text.status_code == 200 and text.json()["model"] == "minilm"  # the default embedding model
    # with an image and no name, the choice is among the models that embed images
    err = assert_400(post(server, {"input": [{"image": b64(PNG_A)}]}), "model", "model_required")
    assert "clip, clip-strict" in err["message"] and "minilm" not in err["message"]
