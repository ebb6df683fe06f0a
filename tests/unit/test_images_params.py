"""Planning an image job against a model's limits, and the image codec (pure, no model)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from gpt_server.backends.diffusers.codec import decode_image, encode_image, mask_from
from gpt_server.backends.diffusers.params import ModelLimits, fit_size, plan_job
from gpt_server.errors import BadRequestError
from gpt_server.protocol.images import ImageGenerationRequest, ImageJob, parse_size

LIM = ModelLimits(min_size=64, max_size=1024, default_size=(512, 512), steps=20, max_steps=50, max_n=4)


def _png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_parse_size() -> None:
    assert parse_size("512x768") == (512, 768)
    assert parse_size("auto") is None and parse_size(None) is None
    for bad in ("512", "512x", "x512", "512*512", "-8x8", "1e3x8"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_plan_defaults_and_quality() -> None:
    p = plan_job(ImageJob(prompt="x"), LIM)
    assert (p.width, p.height, p.steps, p.n) == (512, 512, 20, 1) and p.seed >= 0
    assert plan_job(ImageJob(prompt="x", quality="low"), LIM).steps == 10
    assert plan_job(ImageJob(prompt="x", quality="hd"), LIM).steps == 30
    assert plan_job(ImageJob(prompt="x", quality="high", steps=3), LIM).steps == 3  # steps overrides quality
    assert plan_job(ImageJob(prompt="x", seed=5), LIM).seed == 5


@pytest.mark.parametrize(
    ("job", "param"),
    [
        (ImageJob(prompt="x", size="500x512"), "size"),
        (ImageJob(prompt="x", size="32x512"), "size"),
        (ImageJob(prompt="x", size="2048x512"), "size"),
        (ImageJob(prompt="x", size="huge"), "size"),
        (ImageJob(prompt="x", n=5), "n"),
        (ImageJob(prompt="x", steps=51), "steps"),
    ],
)
def test_plan_refuses_out_of_bounds(job: ImageJob, param: str) -> None:
    with pytest.raises(BadRequestError) as err:
        plan_job(job, LIM)
    assert err.value.param == param and err.value.status == 400


def test_edit_size_follows_input() -> None:
    assert plan_job(ImageJob(prompt="x"), LIM, input_size=(640, 480)).width == 640
    assert fit_size(4000, 3000, LIM) == (1024, 768)
    assert fit_size(30, 20, LIM) == (96, 64)
    w, h = fit_size(333, 999, LIM)
    assert w % 8 == 0 and h % 8 == 0 and LIM.min_size <= w <= LIM.max_size and h <= LIM.max_size


def test_request_schema_bounds() -> None:
    r = ImageGenerationRequest(model="m", prompt="p", response_format=None, quality="", size="")
    assert (r.response_format, r.quality, r.size) == ("b64_json", "auto", None)
    for bad in ({"n": 0}, {"n": 11}, {"steps": 0}, {"output_format": "gif"}, {"size": "big"}, {"prompt": ""}):
        with pytest.raises(ValueError):
            ImageGenerationRequest.model_validate({"model": "m", "prompt": "p", **bad})


def test_mask_conventions() -> None:
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    assert mask_from(None, image) is None  # no mask, no alpha: plain image-to-image
    rgba_mask = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    rgba_mask.putpixel((1, 1), (0, 0, 0, 0))  # transparent = edit here
    m = mask_from(rgba_mask, image)
    assert m.mode == "L" and m.getpixel((1, 1)) == 255 and m.getpixel((0, 0)) == 0
    holes = Image.new("RGBA", (8, 8), (1, 2, 3, 255))
    holes.putpixel((2, 3), (1, 2, 3, 0))
    m2 = mask_from(None, holes)
    assert m2.getpixel((2, 3)) == 255 and m2.getpixel((0, 0)) == 0
    assert mask_from(Image.new("L", (8, 8), 200), image).getpixel((0, 0)) == 200  # grayscale: white = edit


def test_decode_and_encode() -> None:
    img = decode_image(_png(Image.new("RGB", (12, 10), (255, 0, 0))), "image")
    assert img.size == (12, 10)
    tiff = io.BytesIO()
    Image.new("RGB", (4, 4)).save(tiff, format="TIFF")  # readable by PIL, but not an upload format
    for bad in ("!!!", base64.b64encode(b"hello").decode(), base64.b64encode(tiff.getvalue()).decode()):
        with pytest.raises(BadRequestError) as err:
            decode_image(bad, "mask")
        assert err.value.param == "mask"
    for fmt, magic in (("png", b"\x89PNG"), ("jpeg", b"\xff\xd8"), ("webp", b"RIFF")):
        assert encode_image(img, fmt, 50).startswith(magic)
    assert len(encode_image(img, "jpeg", 95)) < len(encode_image(img, "jpeg", 0))  # more compression, fewer bytes
