"""Image bytes in and out: decode uploads (image, mask) and encode results (png/jpeg/webp)."""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, ImageOps, UnidentifiedImageError

from ...errors import BadRequestError

__all__ = ["decode_image", "mask_from", "encode_image", "MAX_PIXELS"]

MAX_PIXELS = 64 * 1024 * 1024  # refuse decompression bombs before decoding
_FORMATS = ("PNG", "JPEG", "WEBP")  # what OpenAI's edits take; PIL's other openers (EPS runs Ghostscript) stay off


def decode_image(data_b64: str, param: str) -> Image.Image:
    """Base64 → a loaded PIL image (EXIF orientation applied); 400 naming ``param`` if unreadable."""
    try:
        raw = base64.b64decode(data_b64, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError(f"{param} is not valid base64", param=param) from None
    try:
        img = Image.open(io.BytesIO(raw), formats=_FORMATS)
        if img.width * img.height > MAX_PIXELS:
            raise BadRequestError(f"{param} is too large ({img.width}x{img.height} pixels)", param=param)
        img.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise BadRequestError(f"{param} is not a readable image (png, jpeg or webp)", param=param, code="invalid_image") from None
    return ImageOps.exif_transpose(img)


def _has_alpha_holes(img: Image.Image) -> bool:
    if "A" not in img.getbands():
        return False
    lo, _ = img.getchannel("A").getextrema()
    return isinstance(lo, (int, float)) and lo < 255


def mask_from(mask: Image.Image | None, image: Image.Image) -> Image.Image | None:
    """The inpainting mask (white = repaint) in diffusers' convention.

    OpenAI's convention: fully transparent pixels of the mask (or of the image itself when
    no mask is sent) mark the area to edit. A mask without alpha is read as grayscale,
    white = edit. None when there is nothing to inpaint (plain image-to-image).
    """
    if mask is not None:
        if "A" in mask.getbands():
            return ImageOps.invert(mask.getchannel("A"))
        return mask.convert("L")
    if _has_alpha_holes(image):
        return ImageOps.invert(image.getchannel("A"))
    return None


def encode_image(img: Image.Image, fmt: str, compression: int | None) -> bytes:
    """PIL image → file bytes; ``compression`` (0-100, OpenAI's output_compression) sets lossy quality."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG")
    elif fmt == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=100 - compression if compression is not None else 90)
    else:
        img.save(buf, format="WEBP", quality=100 - compression if compression is not None else 90)
    return buf.getvalue()
