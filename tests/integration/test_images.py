"""Images through the real server and the openai SDK, on a tiny random Stable Diffusion
pipeline built with diffusers and loaded through the user's config path."""

from __future__ import annotations

import base64
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import Server, served
from tests.images_helpers import (
    build_tiny_sd,
    build_tiny_variation,
    image_config,
    image_entry,
    png_info,
    solid_png,
)


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    parent = tmp_path_factory.mktemp("image-store")
    parent.chmod(0o755)  # a shared parent: the server makes its own directory below it
    return parent / "images"  # not there yet: the server creates it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, images_dir: Path) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("images")
    model_dir = build_tiny_sd(tmp)
    variation_dir = build_tiny_variation(tmp, model_dir)
    cfg = image_config(
        image_entry("tiny-sd", model_dir, alias="dall-e-2", max_inference_steps=400),
        image_entry("tiny-sd-variation", variation_dir),
    )
    cfg["serve_args"].update(images_dir=str(images_dir), images_ttl=600)
    with served(cfg, tmp, "images", 2) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0, timeout=120)


def test_generate_b64_png_of_requested_size(client: openai.OpenAI, server: Server) -> None:
    res = client.images.generate(model="tiny-sd", prompt="a red cube", size="64x48", response_format="b64_json",
                                 extra_body={"steps": 2})
    assert isinstance(res.created, int) and abs(res.created - time.time()) < 120
    assert len(res.data) == 1 and res.data[0].url is None
    assert png_info(base64.b64decode(res.data[0].b64_json)) == ("PNG", (64, 48))
    assert res.usage is not None and res.usage.input_tokens > 0 and res.usage.total_tokens >= res.usage.input_tokens
    assert res.size is None and res.output_format == "png"  # a size OpenAI does not list is left out (strict schema)
    assert "step 2/2" in server.proc.log_text()  # progress is visible in the worker log


def test_generate_urls_served_by_gateway(client: openai.OpenAI, server: Server, images_dir: Path) -> None:
    res = client.images.generate(model="dall-e-2", prompt="two birds", n=2, size="32x32", response_format="url")
    assert len(res.data) == 2
    for item in res.data:
        assert item.b64_json is None and item.url.startswith(f"{server.base_url}/v1/files/images/")
        got = httpx.get(item.url, timeout=10)
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert png_info(got.content) == ("PNG", (32, 32))
        assert (images_dir / _name(item.url)).is_file()
    assert httpx.get(f"{server.base_url}/v1/files/images/img_{'x' * 32}.png", timeout=10).status_code in (403, 404)


def _name(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?", 1)[0]


def test_image_dir_is_private(server: Server, images_dir: Path) -> None:
    assert images_dir.is_dir() and stat.S_IMODE(images_dir.stat().st_mode) == 0o700
    assert images_dir.resolve() != Path(tempfile.gettempdir()).resolve()


def test_symlink_planted_in_the_store_is_not_followed(client: openai.OpenAI, server: Server, images_dir: Path, tmp_path: Path) -> None:
    res = client.images.generate(model="tiny-sd", prompt="x", size="32x32", response_format="url")
    url = res.data[0].url
    assert httpx.get(url, timeout=10).status_code == 200
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for clients")
    target = images_dir / _name(url)
    target.unlink()
    target.symlink_to(secret)  # swapped for a link to another file of the server's user
    r = httpx.get(url, timeout=10)
    assert r.status_code == 404 and b"not for clients" not in r.content


def test_image_urls_are_signed_and_expire(client: openai.OpenAI, server: Server) -> None:
    res = client.images.generate(model="tiny-sd", prompt="y", size="32x32", response_format="url")
    url = res.data[0].url
    base, query = url.split("?", 1)
    params = dict(p.split("=", 1) for p in query.split("&"))
    exp = int(params["exp"])
    assert 500 < exp - time.time() <= 600 + 5  # images_ttl of this server
    assert httpx.get(url, timeout=10).status_code == 200  # fresh: no API key needed
    for bad in (
        f"{base}?exp={exp + 3600}&sig={params['sig']}",  # expiry pushed later
        f"{base}?exp={int(time.time()) - 10}&sig={params['sig']}",  # a past expiry
        f"{base}?exp={exp}&sig={params['sig'][:-2]}AA",  # tampered signature
        base,  # no signature at all
    ):
        r = httpx.get(bad, timeout=10)
        assert r.status_code in (403, 404, 410) and r.json()["error"]["code"], (bad, r.text)


@pytest.mark.parametrize(("fmt", "pil_name"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_output_formats(client: openai.OpenAI, fmt: str, pil_name: str) -> None:
    res = client.images.generate(model="tiny-sd", prompt="x", size="48x32", output_format=fmt, output_compression=20)
    assert png_info(base64.b64decode(res.data[0].b64_json)) == (pil_name, (48, 32))


def test_seed_is_deterministic(client: openai.OpenAI) -> None:
    def gen(seed: int, negative: str | None = None) -> str:
        body = {"seed": seed, "negative_prompt": negative} if negative else {"seed": seed}
        return client.images.generate(model="tiny-sd", prompt="a cat", size="32x32", extra_body=body).data[0].b64_json

    first = gen(7)
    assert gen(7) == first
    assert gen(8) != first
    assert gen(7, negative="blurry") != first  # the negative prompt reaches the pipeline


def test_edit_image_to_image_and_inpaint(client: openai.OpenAI) -> None:
    image = solid_png((64, 48), (200, 30, 30))
    plain = client.images.edit(model="tiny-sd", image=("in.png", image), prompt="make it blue", extra_body={"seed": 3})
    assert png_info(base64.b64decode(plain.data[0].b64_json)) == ("PNG", (64, 48))  # size follows the input
    mask = solid_png((64, 48), (0, 0, 0, 0), mode="RGBA")  # fully transparent: edit everywhere
    inpainted = client.images.edit(
        model="tiny-sd", image=("in.png", image), mask=("mask.png", mask), prompt="make it blue",
        size="32x32", extra_body={"seed": 3},
    )
    assert png_info(base64.b64decode(inpainted.data[0].b64_json)) == ("PNG", (32, 32))
    # the image's own transparency is the mask when none is sent (OpenAI's convention)
    holes = solid_png((64, 48), (200, 30, 30, 0), mode="RGBA")
    by_alpha = client.images.edit(model="tiny-sd", image=("in.png", holes), prompt="make it blue",
                                  size="32x32", extra_body={"seed": 3})
    assert by_alpha.data[0].b64_json == inpainted.data[0].b64_json
    same_no_mask = client.images.edit(model="tiny-sd", image=("in.png", image), prompt="make it blue",
                                      size="32x32", extra_body={"seed": 3})
    assert same_no_mask.data[0].b64_json != inpainted.data[0].b64_json


def test_edit_url_and_several_images_refused(client: openai.OpenAI) -> None:
    image = solid_png((32, 32), (10, 120, 10))
    res = client.images.edit(model="tiny-sd", image=("a.png", image), prompt="x", response_format="url")
    assert png_info(httpx.get(res.data[0].url, timeout=10).content) == ("PNG", (32, 32))
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(model="tiny-sd", image=[("a.png", image), ("b.png", image)], prompt="x")
    assert err.value.body["param"] == "image"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"size": "100x100"}, "size"),  # not a multiple of 8
        ({"size": "4096x4096"}, "size"),  # above the model's image_max_size
        ({"size": "big"}, "size"),
        ({"n": 4}, "n"),  # above the model's max_n
        ({"n": 11}, "n"),  # above OpenAI's bound
        ({"extra_body": {"steps": 1000}}, "steps"),
        ({"extra_body": {"steps": 0}}, "steps"),
    ],
)
def test_bad_generation_params(client: openai.OpenAI, kwargs: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="tiny-sd", prompt="x", **kwargs)
    assert err.value.status_code == 400 and err.value.body["param"] == param


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks create_variation deprecated
def test_edit_errors_and_variations(client: openai.OpenAI, server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(model="tiny-sd", image=("a.png", b"not an image"), prompt="x")
    assert err.value.body["param"] == "image"
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(model="tiny-sd", image=("a.png", solid_png((32, 32), (1, 2, 3))),
                           mask=("m.png", solid_png((16, 16), (0, 0, 0, 0), "RGBA")), prompt="x")
    assert err.value.body["param"] == "mask"
    with pytest.raises(openai.BadRequestError) as err:  # a text-to-image pipeline has no variation mode
        client.images.create_variation(model="tiny-sd", image=("a.png", solid_png((32, 32), (1, 2, 3))))
    assert err.value.body["param"] == "model"
    r = httpx.post(f"{server.base_url}/v1/images/edits", data={"model": "tiny-sd", "prompt": "x"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "image"
    with pytest.raises(openai.BadRequestError) as err:  # 2 steps × strength 0.1 leaves no step: the pipeline says so
        client.images.edit(model="tiny-sd", image=("a.png", solid_png((32, 32), (1, 2, 3))), prompt="x",
                           extra_body={"strength": 0.1})
    assert err.value.body["param"] == "strength"
    paths = httpx.get(f"{server.base_url}/openapi.json", timeout=10).json()["paths"]
    assert "multipart/form-data" in paths["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert "/v1/images/generations" in paths and "/v1/images/variations" in paths


def test_client_disconnect_cancels_generation(client: openai.OpenAI, server: Server) -> None:
    body = {"model": "tiny-sd", "prompt": "slow", "size": "256x256", "steps": 400}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/images/generations", json=body, timeout=httpx.Timeout(10, read=2.0))
    deadline = time.monotonic() + 30
    while "cancelled (client gone)" not in server.proc.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = server.proc.log_text()
    assert "cancelled (client gone)" in log, log
    assert "step 400/400" not in log
    started = time.monotonic()  # the worker is free again at once
    res = client.images.generate(model="tiny-sd", prompt="after", size="32x32")
    assert res.data and time.monotonic() - started < 30


def test_concurrent_requests_all_complete(client: openai.OpenAI) -> None:
    out: list[str] = []

    def one(i: int) -> None:
        res = client.images.generate(model="tiny-sd", prompt=f"p{i}", size="32x32", extra_body={"seed": i})
        out.append(res.data[0].b64_json)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(out) == 3 and len(set(out)) == 3


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks create_variation deprecated
def test_variations_with_a_variation_pipeline(client: openai.OpenAI) -> None:
    image = ("in.png", solid_png((40, 56), (30, 60, 200)))
    res = client.images.create_variation(model="tiny-sd-variation", image=image, n=2, size="48x32", extra_body={"seed": 4})
    assert [png_info(base64.b64decode(d.b64_json)) for d in res.data] == [("PNG", (48, 32))] * 2
    again = client.images.create_variation(model="tiny-sd-variation", image=image, extra_body={"seed": 4})
    assert png_info(base64.b64decode(again.data[0].b64_json)) == ("PNG", (40, 56))  # size follows the input
    with pytest.raises(openai.BadRequestError) as err:  # this model only makes variations
        client.images.generate(model="tiny-sd-variation", prompt="x")
    assert err.value.body["param"] == "model"
