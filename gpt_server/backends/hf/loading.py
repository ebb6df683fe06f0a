"""Load a transformers model (causal LM or image-text-to-text), its tokenizer/processor and LoRA adapters."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from ...errors import BadRequestError
from ...settings import ConfigError, resolve_model_path
from . import HFOptions
from .tokens import TokenTable

__all__ = ["LoadedModel", "load_model", "resolve_dtype"]

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def resolve_dtype(name: str | None, on_gpu: bool) -> Any:
    """Config dtype → torch dtype (or "auto"). Default: the checkpoint's dtype on GPU, float32 on CPU."""
    import torch

    if name is None:
        return "auto" if on_gpu else torch.float32
    if name == "auto":
        return "auto"
    if name.lower() not in _DTYPES:
        raise ConfigError(f"model_config.dtype: '{name}' is not supported (auto, float32, float16, bfloat16)")
    return getattr(torch, _DTYPES[name.lower()])


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    processor: Any | None
    tokens: TokenTable
    n_ctx: int
    chat_template: str | None
    adapters: list[str] = field(default_factory=list)
    _current: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def encode(self, text: str, *, add_special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def process_vision(self, text: str, images: list[Any]) -> tuple[list[list[int]], dict[str, Any] | None]:
        """Prompt ids (image tokens expanded) and the tensors the model's prefill needs."""
        if self.processor is None:
            raise BadRequestError("this model does not take images", param="messages")
        try:
            out = self.processor(text=[text], images=images or None, return_tensors="pt", add_special_tokens=False)
        except (ValueError, TypeError) as exc:
            raise BadRequestError(f"the images do not fit the model's processor: {exc}", param="messages") from exc
        ids = out["input_ids"][0].tolist()
        extra = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask") and hasattr(v, "to")}
        return [ids], extra or None

    def set_adapter(self, name: str | None) -> None:
        """Route the next forward through adapter ``name`` (None: the base model). Engine thread only."""
        if not self.adapters or name == self._current:
            return
        tuner = self.model.base_model
        if name is None:
            tuner.disable_adapter_layers()
        else:
            if self._current is None:
                tuner.enable_adapter_layers()
            self.model.set_adapter(name)
        self._current = name


def _chat_template(tokenizer: Any, processor: Any | None) -> str | None:
    for obj in (processor, tokenizer):
        tpl = getattr(obj, "chat_template", None) if obj is not None else None
        if isinstance(tpl, dict):
            tpl = tpl.get("default") or next(iter(tpl.values()), None)
        if tpl:
            return tpl
    return None


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    ids: set[int] = set()
    for v in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, list | tuple):
            ids.update(int(x) for x in v)
    return ids


def _load_adapters(model: Any, lora: dict[str, str]) -> Any:
    from peft import PeftModel

    items = list(lora.items())
    name, path = items[0]
    model = PeftModel.from_pretrained(model, resolve_model_path(path), adapter_name=name)
    for name, path in items[1:]:
        model.load_adapter(resolve_model_path(path), adapter_name=name)
    model.base_model.disable_adapter_layers()
    return model.eval()


def load_model(path: str, mc: HFOptions, on_gpu: bool, threads: int | None) -> LoadedModel:
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    if threads:
        torch.set_num_threads(threads)
    trust = mc.trust_remote_code  # explicit per model (default off): code shipped with the model runs only then
    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust)
    except ValueError as exc:
        if trust or "trust_remote_code" not in str(exc):
            raise
        raise ConfigError(
            "model_config.trust_remote_code: the model ships its own Python code (auto_map in its config.json); "
            "set trust_remote_code: true for this model if you trust that code"
        ) from None
    vision = getattr(cfg, "vision_config", None) is not None
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(mc.dtype, on_gpu), "trust_remote_code": trust}
    if on_gpu:
        kwargs["device_map"] = "auto"  # spread over the worker's GPUs (CUDA_VISIBLE_DEVICES)
    cls = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    model = cls.from_pretrained(path, **kwargs).eval()
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust) if vision else None
    tokenizer = processor.tokenizer if processor is not None else AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    if mc.lora:
        model = _load_adapters(model, mc.lora)
    n_vocab = int(model.get_output_embeddings().weight.shape[0])
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    trained = getattr(text_cfg, "max_position_embeddings", None) or 4096
    n_ctx = min(mc.max_model_len or mc.n_ctx or trained, trained)
    tokens = TokenTable(tokenizer, n_vocab, _eos_ids(tokenizer, model))
    log.info("loaded %s (%s, vocab %d, context %d, adapters %s)", path, type(model).__name__, n_vocab, n_ctx, list(mc.lora or {}))
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        processor=processor,
        tokens=tokens,
        n_ctx=n_ctx,
        chat_template=_chat_template(tokenizer, processor),
        adapters=list(mc.lora or {}),
    )
