"""gpt_server's config shape, read as ours: the one place that knows its names.

Seed configs written for gpt_server run unchanged: its ``model_type`` names map to kinds (the
kinds declare them, ``protocol/*``), ``work_mode: hf`` on an image model means diffusers,
entry-level ``lora:`` joins ``model_config.lora``, ``model_config.task_type`` picks the text
task of an ``embedding`` entry, and an ``embedding`` entry whose model is a cross-encoder
becomes a rerank model (a sequence classifier with more labels: moderation), as gpt_server's
infinity worker decides from the model's config. What has no counterpart here is refused by
name with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["REFUSED_MODEL_TYPES", "ENGINE_HINTS", "ENGINE_ALIASES", "TASK_KINDS", "lift_entry", "detect_text_task", "text_task_kind"]

# gpt_server model_type names with no endpoint or engine here: refused with the reason
REFUSED_MODEL_TYPES: dict[str, str] = {
    "wan": "Wan is a text-to-video model and this server has no video endpoint (OpenAI's API has none either)",
    "voxcpm_tts": "VoxCPM needs its own runtime, which no engine here runs; use model_type tts with work_mode piper",
}

# why a gpt_server model_type cannot run on the work_mode its config names (the kind can, elsewhere)
ENGINE_HINTS: dict[str, str] = {
    "funasr": "FunASR models (SenseVoice, Paraformer) need the FunASR runtime, which no engine here runs; "
    "serve a Whisper model with work_mode faster_whisper",
    "spark_tts": "Spark-TTS needs its own runtime, which no engine here runs; serve a Piper voice with work_mode piper",
    "cosyvoice": "CosyVoice needs its own runtime, which no engine here runs; serve a Piper voice with work_mode piper",
}

# (kind, gpt_server work_mode) → our engine: gpt_server runs image models "on hf", i.e. diffusers
ENGINE_ALIASES: dict[tuple[str, str], str] = {("image", "hf"): "diffusers"}

# model_config.task_type of an embedding entry (gpt_server) → kind; auto = from the model's config
TASK_KINDS: dict[str, str | None] = {"auto": None, "embedding": "embedding", "reranker": "rerank", "classify": "moderation"}


def lift_entry(body: dict[str, Any]) -> dict[str, Any]:
    """Entry-level keys gpt_server accepts that belong to ``model_config`` here: ``lora`` joins
    ``model_config.lora``; ``model_config.task_type`` moves up to the entry (it picks the kind)."""
    out = dict(body)
    mc = out.get("model_config")
    if not isinstance(mc, dict):
        return out
    mc = dict(mc)
    if "lora" in out:
        lora = out.pop("lora")
        if lora is not None:
            if mc.get("lora") not in (None, lora):
                raise ValueError("lora is set both on the entry and in model_config with different adapters: keep one")
            mc["lora"] = lora
    if "task_type" in mc:
        task = mc.pop("task_type")
        if out.get("task_type") not in (None, task):
            raise ValueError("task_type is set both on the entry and in model_config: keep one")
        out["task_type"] = task
    out["model_config"] = mc
    return out


def detect_text_task(path: str) -> str | None:
    """``rerank`` for a cross-encoder (a sequence classifier with one label), ``moderation``
    for a classifier with more, None otherwise or when the model's config cannot be read."""
    folder = Path(path)
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    archs = data.get("architectures") or [] if isinstance(data, dict) else []
    if not any(str(a).endswith("ForSequenceClassification") for a in archs):
        return None
    labels = data.get("id2label")
    n = len(labels) if isinstance(labels, dict) and labels else int(data.get("num_labels") or 2)
    return "rerank" if n == 1 else "moderation"


def text_task_kind(task_type: str | None, path: str | None) -> str | None:
    """The kind an ``embedding`` entry becomes (None: it stays an embedding model)."""
    kind = TASK_KINDS.get(task_type or "auto")
    if kind is not None:
        return kind
    return detect_text_task(path) if path else None
