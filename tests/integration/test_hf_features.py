"""transformers backend features beyond the shared contract: LoRA adapters and vision.

One server runs SmolLM2 (converted to HF format) with two random LoRA adapters built with
peft, and a tiny random LLaVA (CLIP vision tower + Llama) with its real processor.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import Server, base_config, served
from tests.hf_helpers import hf_entry, lora_dir, smollm_hf_dir, tiny_llava_dir

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("hf-features")
    base, lora_a, lora_b, vlm = smollm_hf_dir(), lora_dir(1), lora_dir(2), tiny_llava_dir()
    models = [
        hf_entry("smol", base, lora={"smol-lora-a": str(lora_a), "smol-lora-b": str(lora_b)}, n_parallel=8),
        hf_entry("tiny-vlm", vlm, n_parallel=2),
    ]
    with served(base_config(models=models), tmp, "hf_features", 2) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=120)


def _greedy(client: openai.OpenAI, model: str, out: dict[str, str] | None = None) -> str:
    r = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=6, temperature=0, logit_bias={"2": -100})
    text = r.choices[0].message.content
    if out is not None:
        out[model + str(len(out))] = text
    return text


def test_lora_adapters_are_models(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list().data}
    assert {"smol", "smol-lora-a", "smol-lora-b", "tiny-vlm"} <= ids


def test_lora_changes_output_without_cross_talk(client: openai.OpenAI) -> None:
    names = ["smol", "smol-lora-a", "smol-lora-b"]
    alone = {n: _greedy(client, n) for n in names}
    assert len(set(alone.values())) == 3, alone  # each adapter really changes the model
    # the same requests at once, interleaved: every one gets what it got alone
    results: list[tuple[str, str]] = []

    def run(n: str) -> None:
        results.append((n, _greedy(client, n)))

    threads = [threading.Thread(target=run, args=(n,)) for n in names * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6
    for n, text in results:
        assert text == alone[n], (n, text, alone[n])


def _png(color: tuple[int, int, int]) -> str:
    from PIL import Image

    img = Image.new("RGB", (40, 30), color)
    for x in range(0, 40, 4):
        img.putpixel((x, x % 30), (255 - color[0], 255 - color[1], 255 - color[2]))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _vision(client: openai.OpenAI, url: str | None, **kw: Any) -> Any:
    content: list[dict[str, Any]] = [{"type": "text", "text": "Describe the image."}]
    if url is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": url}})
    return client.chat.completions.create(
        model="tiny-vlm", messages=[{"role": "user", "content": content}], max_tokens=2, temperature=0,
        logprobs=True, top_logprobs=2, **kw,
    )


def test_vision_image_reaches_the_model(client: openai.OpenAI) -> None:
    red, blue, text_only = _vision(client, _png((255, 0, 0))), _vision(client, _png((0, 0, 255))), _vision(client, None)
    # the <image> placeholder expands to (32 / 8)² = 16 image tokens
    assert red.usage.prompt_tokens == text_only.usage.prompt_tokens + 16
    assert red.usage.completion_tokens == 2
    lp_red = [t.logprob for t in red.choices[0].logprobs.content[0].top_logprobs]
    lp_blue = [t.logprob for t in blue.choices[0].logprobs.content[0].top_logprobs]
    assert lp_red != lp_blue  # different pixels, different next-token distribution
    again = _vision(client, _png((255, 0, 0)))
    assert [t.logprob for t in again.choices[0].logprobs.content[0].top_logprobs] == pytest.approx(lp_red, abs=1e-5)


def test_vision_stream(client: openai.OpenAI) -> None:
    url = _png((0, 200, 0))
    full = _vision(client, url)
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Describe the image."}]
    stream = client.chat.completions.create(
        model="tiny-vlm", messages=[{"role": "user", "content": content}], max_tokens=2, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == full.choices[0].message.content
    # n samples of one image request each see the image
    both = _vision(client, url, n=2)
    assert [c.message.content for c in both.choices] == [full.choices[0].message.content] * 2
    assert both.usage.prompt_tokens == full.usage.prompt_tokens


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/x.png", "http://localhost/x.png", "http://169.254.169.254/latest", "ftp://example.com/x.png",
     "data:image/png;base64,!!notbase64", "data:image/png;base64," + base64.b64encode(b"not an image").decode()],
)
def test_vision_bad_or_private_urls_refused(server: Server, url: str) -> None:
    body = {"model": "tiny-vlm", "max_tokens": 1, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}]}
    ]}
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "messages[0].content[0].image_url"


def test_text_model_refuses_images(server: Server) -> None:
    body = {"model": "smol", "max_tokens": 1, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": _png((1, 2, 3))}}]}
    ]}
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_content"


def test_structured_output_and_enforced_tools(client: openai.OpenAI) -> None:
    """The shared chat layer (xgrammar logits masking, tool parsers) works on this engine too."""
    import json

    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]}
    r = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Give me a person as JSON."}], max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
    )
    obj = json.loads(r.choices[0].message.content)
    assert isinstance(obj["name"], str) and isinstance(obj["age"], int)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    r = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "What is the weather in Paris?"}], max_tokens=60, temperature=0,
        tools=tools, tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
