"""The image suite (kind ``image``: image, image_edit, image_variation), through a real server
and the openai SDK. ``model`` generates and edits; ``variation_model`` makes variations."""

from __future__ import annotations

import base64
import time
from typing import Any, ClassVar

import httpx
import openai
import pytest

from tests.contract.base import Suite, covers
from tests.helpers import Server
from tests.images_helpers import png_info, solid_png
from tests.openai_shapes import assert_openai_shape

__all__ = ["ImageSuite"]


def _decoded(res: Any, i: int = 0) -> tuple[str, tuple[int, int]]:
    return png_info(base64.b64decode(res.data[i].b64_json))


class ImageSuite(Suite):
    """An engine subclass sets ``model``/``variation_model``; both allow sizes 32…256 in steps
    of 8 and at most ``max_n`` images a request."""

    kind = "image"
    model: ClassVar[str] = "image"
    variation_model: ClassVar[str] = "image-variation"
    max_n: ClassVar[int] = 3

    @covers("image")
    def test_generate_b64_of_the_requested_size(self, client: openai.OpenAI) -> None:
        res = client.images.generate(model=self.model, prompt="a red cube", size="64x48", response_format="b64_json")
        assert isinstance(res.created, int) and abs(res.created - time.time()) < 120
        assert len(res.data) == 1 and res.data[0].url is None
        assert _decoded(res) == ("PNG", (64, 48))
        assert res.usage is not None and res.usage.input_tokens > 0 and res.usage.total_tokens >= res.usage.input_tokens

    @covers("image")
    def test_responses_match_the_openai_schema(self, server: Server) -> None:
        for fmt in ("b64_json", "url"):
            body = {"model": self.model, "prompt": "a red cube", "size": "32x32", "response_format": fmt}
            r = httpx.post(f"{server.base_url}/v1/images/generations", json=body, headers=server.headers(), timeout=120)
            assert r.status_code == 200, r.text
            assert_openai_shape("ImagesResponse", r.json())

    @covers("image")
    def test_urls_are_served_by_the_gateway(self, client: openai.OpenAI, server: Server) -> None:
        res = client.images.generate(model=self.model, prompt="two birds", n=2, size="32x32", response_format="url")
        assert len(res.data) == 2 and res.data[0].url != res.data[1].url
        for item in res.data:
            assert item.b64_json is None and item.url.startswith(f"{server.base_url}/v1/files/images/")
            got = httpx.get(item.url, timeout=30)
            assert got.status_code == 200 and got.headers["content-type"] == "image/png"
            assert png_info(got.content) == ("PNG", (32, 32))

    @covers("image")
    def test_seed_and_output_format(self, client: openai.OpenAI) -> None:
        def gen(seed: int, **kw: Any) -> str:
            return client.images.generate(
                model=self.model, prompt="a cat", size="32x32", extra_body={"seed": seed}, **kw
            ).data[0].b64_json

        first = gen(7)
        assert gen(7) == first and gen(8) != first
        webp = client.images.generate(model=self.model, prompt="x", size="48x32", output_format="webp", output_compression=20)
        assert _decoded(webp) == ("WEBP", (48, 32))

    @covers("image_edit")
    def test_edit_follows_the_input_and_the_mask(self, client: openai.OpenAI) -> None:
        image = solid_png((64, 48), (200, 30, 30))
        plain = client.images.edit(model=self.model, image=("in.png", image), prompt="make it blue", extra_body={"seed": 3})
        assert _decoded(plain) == ("PNG", (64, 48))  # the size follows the input
        mask = solid_png((64, 48), (0, 0, 0, 0), mode="RGBA")  # fully transparent: edit everywhere
        masked = client.images.edit(model=self.model, image=("in.png", image), mask=("mask.png", mask),
                                    prompt="make it blue", size="32x32", extra_body={"seed": 3})
        assert _decoded(masked) == ("PNG", (32, 32))
        # the image's own transparency is the mask when none is sent (OpenAI's convention)
        holes = solid_png((64, 48), (200, 30, 30, 0), mode="RGBA")
        by_alpha = client.images.edit(model=self.model, image=("in.png", holes), prompt="make it blue",
                                      size="32x32", extra_body={"seed": 3})
        assert by_alpha.data[0].b64_json == masked.data[0].b64_json

    @covers("image_edit")
    def test_edit_errors_are_400_with_param(self, client: openai.OpenAI, server: Server) -> None:
        with pytest.raises(openai.BadRequestError) as err:
            client.images.edit(model=self.model, image=("a.png", b"not an image"), prompt="x")
        assert err.value.body["param"] == "image"
        with pytest.raises(openai.BadRequestError) as err:
            client.images.edit(model=self.model, image=("a.png", solid_png((32, 32), (1, 2, 3))),
                               mask=("m.png", solid_png((16, 16), (0, 0, 0, 0), "RGBA")), prompt="x")
        assert err.value.body["param"] == "mask"
        r = httpx.post(f"{server.base_url}/v1/images/edits", data={"model": self.model, "prompt": "x"}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "image"

    @covers("image_variation")
    @pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks create_variation deprecated
    def test_variations(self, client: openai.OpenAI) -> None:
        image = ("in.png", solid_png((40, 56), (30, 60, 200)))
        res = client.images.create_variation(model=self.variation_model, image=image, n=2, size="48x32",
                                             extra_body={"seed": 4})
        assert [_decoded(res, i) for i in range(2)] == [("PNG", (48, 32))] * 2
        again = client.images.create_variation(model=self.variation_model, image=image, extra_body={"seed": 4})
        assert _decoded(again) == ("PNG", (40, 56))  # the size follows the input
        with pytest.raises(openai.BadRequestError) as err:
            client.images.create_variation(model=self.variation_model, image=("a.png", b"junk"))
        assert err.value.body["param"] == "image"

    @covers("image", "image_variation")
    @pytest.mark.filterwarnings("ignore::DeprecationWarning")
    def test_each_model_refuses_what_it_cannot_do(self, client: openai.OpenAI) -> None:
        with pytest.raises(openai.BadRequestError) as err:  # a text-to-image pipeline has no variation mode
            client.images.create_variation(model=self.model, image=("a.png", solid_png((32, 32), (1, 2, 3))))
        assert err.value.body["param"] == "model"
        with pytest.raises(openai.BadRequestError) as err:  # a variation pipeline takes no prompt
            client.images.generate(model=self.variation_model, prompt="x")
        assert err.value.body["param"] == "model"

    @covers("image")
    @pytest.mark.parametrize(
        ("kwargs", "param"),
        [
            ({"size": "100x100"}, "size"),  # not a multiple of 8
            ({"size": "4096x4096"}, "size"),  # above the model's largest size
            ({"size": "big"}, "size"),
            ({"n": 11}, "n"),  # above OpenAI's bound
            ({"n": "max_n+1"}, "n"),  # above the model's own bound
        ],
    )
    def test_bad_generation_params_are_400_with_param(self, client: openai.OpenAI, kwargs: dict[str, Any], param: str) -> None:
        if kwargs.get("n") == "max_n+1":
            kwargs = {"n": self.max_n + 1}
        with pytest.raises(openai.BadRequestError) as err:
            client.images.generate(model=self.model, prompt="x", **kwargs)
        assert err.value.status_code == 400 and err.value.body["param"] == param
