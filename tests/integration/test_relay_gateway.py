"""work_mode: openai in front of a second GPT Server: vision, guided output, enforced tools
and an upstream's LoRA adapters through the relay, end to end on real (tiny) models.

The upstream is a GPT Server serving a tiny random LLaVA with transformers (``hf``), under
the default media policy: it refuses image URLs on private addresses. The relay (a second GPT
Server) may fetch them (``allow_private_media_urls``): an image served on loopback reaches
the model only if the relay fetched it, checked its size and inlined it as a data: URL.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import WEATHER_TOOL, Server, base_config, served
from tests.hf_helpers import hf_entry, lora_dir, smollm_hf_dir, tiny_llava_dir

KEY_ENV = "GPT_SERVER_TEST_GATEWAY_UPSTREAM_KEY"
MAX_PIXELS = 64 * 64


def _png(side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


class ImageHost:
    """Serves /small.png (32x32) and /big.png (128x128) on loopback and counts the requests."""

    def __init__(self) -> None:
        files = {"/small.png": _png(32), "/big.png": _png(128)}
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                data = files.get(self.path)
                self.send_response(200 if data else 404)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def log_message(self, *args: object) -> None:
                return None

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.srv.shutdown()


@pytest.fixture(scope="module")
def images() -> Iterator[ImageHost]:
    host = ImageHost()
    yield host
    host.close()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("relay_gateway_upstream")
    models = [hf_entry("vlm", tiny_llava_dir()), hf_entry("smol", smollm_hf_dir(), lora={"smol-lora": str(lora_dir(1))})]
    cfg = base_config(api_keys="up-key", models=models)
    with served(cfg, tmp, "relay_gateway_upstream", timeout=180) as srv:
        yield srv


def _relay(name: str, upstream: Server, model: str = "vlm", **mc: Any) -> dict[str, Any]:
    config = {"model_name_or_path": model, "api_base": f"{upstream.base_url}/v1", "api_key_env": KEY_ENV,
              "upstream_timeout": 60, **mc}
    return {name: {"model_config": config, "model_type": "auto", "work_mode": "openai", "workers": [{"gpus": []}]}}


@pytest.fixture(scope="module")
def relay(upstream: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("relay_gateway")
    os.environ[KEY_ENV] = "up-key"
    models = [
        _relay("relay-vlm", upstream, api_flavor="gpt_server", allow_private_media_urls=True, max_image_pixels=MAX_PIXELS),
        _relay("relay-plain", upstream),  # api_flavor openai: what OpenAI's API lacks is refused
        _relay("relay-smol", upstream, "smol", lora_adapters=["smol-lora"]),
    ]
    try:
        with served(base_config(models=models), tmp, "relay_gateway", timeout=120) as srv:
            yield srv
    finally:
        os.environ.pop(KEY_ENV, None)


@pytest.fixture(scope="module")
def client(relay: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{relay.base_url}/v1", api_key="none", max_retries=0, timeout=120)


def _image_message(url: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is in the image?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def test_image_url_is_fetched_checked_and_inlined_by_the_relay(
    client: openai.OpenAI, upstream: Server, images: ImageHost
) -> None:
    url = f"{images.base_url}/small.png"
    images.hits.clear()
    for stream in (False, True):
        r = client.chat.completions.create(model="relay-vlm", messages=_image_message(url), max_tokens=6, stream=stream)
        text = "".join(c.choices[0].delta.content or "" for c in r if c.choices) if stream else r.choices[0].message.content
        assert text
    assert images.hits == ["/small.png", "/small.png"]  # the relay fetched it, once per request
    # the same URL sent to the upstream directly: refused there (a private address), so what
    # reached the model above was the relay's inline copy
    direct = openai.OpenAI(base_url=f"{upstream.base_url}/v1", api_key="up-key", max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError) as ei:
        direct.chat.completions.create(model="vlm", messages=_image_message(url), max_tokens=2)
    assert "private" in ei.value.message or "address" in ei.value.message
    assert images.hits == ["/small.png", "/small.png"]


def test_pixel_budget_is_checked_before_the_engine(client: openai.OpenAI, images: ImageHost) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="relay-vlm", messages=_image_message(f"{images.base_url}/big.png"), max_tokens=2)
    body = ei.value.body if isinstance(ei.value.body, dict) else {}
    assert body.get("param") == "messages[0].content[1].image_url" and "pixels" in ei.value.message


def test_guided_output_and_enforced_tools_through_a_gpt_server_upstream(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Pick one."}]
    r = client.chat.completions.create(model="relay-vlm", messages=ask, max_tokens=8, extra_body={"guided_choice": ["up", "down"]})
    assert r.choices[0].message.content in ("up", "down")
    r = client.chat.completions.create(model="relay-vlm", messages=ask, max_tokens=12, extra_body={"guided_regex": "[0-9]{2}-[a-z]{2}"})
    assert len(r.choices[0].message.content or "") == 5 and r.choices[0].message.content[2] == "-"  # type: ignore[index]
    r = client.chat.completions.create(model="relay-vlm", messages=ask, max_tokens=60, tools=[WEATHER_TOOL],
                                       tool_choice="required", parallel_tool_calls=False)
    (call,) = r.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    # an upstream of unknown make (api_flavor openai) gets no guided_*: a 400, not a silent drop
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="relay-plain", messages=ask, max_tokens=4, extra_body={"guided_regex": "a+"})
    assert isinstance(ei.value.body, dict) and ei.value.body["param"] == "guided_regex"
    assert ei.value.body["code"] == "unsupported_parameter"


def test_upstream_lora_adapters_are_model_ids_with_their_parent(client: openai.OpenAI, relay: Server, upstream: Server) -> None:
    cards = {m["id"]: m for m in httpx.get(f"{relay.base_url}/v1/models", timeout=30).json()["data"]}
    assert cards["smol-lora"]["parent"] == "relay-smol" and cards["relay-smol"]["parent"] is None
    kw: dict[str, Any] = dict(messages=[{"role": "user", "content": "Say something about the sea."}], max_tokens=10, temperature=0)
    base = client.chat.completions.create(model="relay-smol", **kw).choices[0].message.content
    tuned = client.chat.completions.create(model="smol-lora", **kw)
    assert tuned.model == "smol-lora" and tuned.choices[0].message.content != base
    direct = openai.OpenAI(base_url=f"{upstream.base_url}/v1", api_key="up-key", max_retries=0, timeout=60)
    assert direct.chat.completions.create(model="smol-lora", **kw).choices[0].message.content == tuned.choices[0].message.content
