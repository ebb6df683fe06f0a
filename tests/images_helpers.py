"""A tiny random Stable Diffusion pipeline built with diffusers, saved like a real model dir.

No hub is reachable and no package ships a diffusion model: the UNet, VAE and CLIP text
encoder are built from small configs with random weights; the CLIP tokenizer gets a
byte-level vocab.json / merges.txt written here (no merges: one token per character).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from tests.helpers import base_config

__all__ = ["build_tiny_sd", "build_tiny_variation", "image_config", "image_entry", "png_info", "solid_png"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte ↔ printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _write_tokenizer_files(folder: Path) -> tuple[Path, Path, dict[str, int]]:
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]:
        vocab[token] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder / "vocab.json", folder / "merges.txt", vocab


def build_tiny_sd(out: Path, seed: int = 0) -> Path:
    """Save a tiny random StableDiffusionPipeline to ``out/tiny-sd``; its path."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    vocab_file, merges_file, vocab = _write_tokenizer_files(out / "tokenizer-src")
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=32)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4, sample_size=32,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
        vocab_size=len(vocab), max_position_embeddings=32, projection_dim=16,
    ))
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=DDIMScheduler(clip_sample=False, steps_offset=1), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    target = out / "tiny-sd"
    pipe.save_pretrained(target)
    return target


def build_tiny_variation(out: Path, sd_dir: Path) -> Path:
    """An image-variation pipeline (CLIP image encoder instead of the text encoder) from the tiny SD's parts."""
    import torch
    from diffusers import StableDiffusionImageVariationPipeline, StableDiffusionPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(1)
    sd = StableDiffusionPipeline.from_pretrained(sd_dir)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, projection_dim=16, image_size=32, patch_size=8, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32,
    ))
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pipe = StableDiffusionImageVariationPipeline(
        vae=sd.vae, image_encoder=encoder, unet=sd.unet, scheduler=sd.scheduler, safety_checker=None,
        feature_extractor=processor, requires_safety_checker=False,
    )
    target = out / "tiny-sd-variation"
    pipe.save_pretrained(target)
    return target


def image_entry(name: str, model_dir: Path, alias: str | None = None, **model_config: Any) -> dict[str, Any]:
    """A models: entry serving ``model_dir`` with the diffusers backend on the CPU."""
    body: dict[str, Any] = {
        "model_config": {
            "model_name_or_path": str(model_dir), "n_threads": 1, "image_min_size": 32, "image_max_size": 256,
            "num_inference_steps": 2, "max_inference_steps": 8, "max_n": 3, **model_config,
        },
        "model_type": "image",
        "work_mode": "diffusers",
        "device": "cpu",
        "workers": [{"gpus": []}],
    }
    if alias:
        body["alias"] = alias
    return {name: body}


def image_config(*entries: dict[str, Any]) -> dict[str, Any]:
    """A server config serving the given image model entries."""
    return base_config(models=list(entries))


def png_info(data: bytes) -> tuple[str, tuple[int, int]]:
    """(format, size) of an encoded image, after a full decode (a truncated file fails)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.format, img.size


def solid_png(size: tuple[int, int], color: tuple[int, ...], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()
