"""Blocking model wrappers, one per task. Each ``run_batch`` takes a list of items and
returns one output per item (or an exception instance for an item it cannot take);
the dynamic batcher calls them on its own thread.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BadRequestError
from ..text_tasks.inputs import pad_ids, split_inputs

__all__ = [
    "EmbedOutput",
    "EmbedEngine",
    "CrossEncoderEngine",
    "SequenceClassifierEngine",
    "SklearnClassifierEngine",
    "is_sklearn_dir",
    "torch_device",
]

log = logging.getLogger(__name__)

EmbedOutput = tuple[np.ndarray, int]  # (vector, tokens used)


def torch_device(device: str) -> str:
    import torch

    if device == "cpu":
        return "cpu"
    if device in ("gpu", "cuda"):
        return "cuda"
    return "cuda" if torch.cuda.is_available() else "cpu"


def is_sklearn_dir(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "model.joblib").is_file() and (p / "vectorizer.joblib").is_file()


def _position_limit(model: Any) -> int | None:
    """Positions the (text) transformer of a SentenceTransformer has, if it says."""
    try:
        config = model[0].auto_model.config
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


class EmbedEngine:
    """A SentenceTransformer; inputs are texts, token-id lists (the model's own vocabulary)
    and, for a model with the image modality (CLIP-style), decoded RGB images."""

    def __init__(
        self, path: str, device: str, max_seq_length: int | None, normalize: bool | None, *, trust_remote_code: bool = False
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device=device, trust_remote_code=trust_remote_code)
        self.model.eval()
        limit = _position_limit(self.model)
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        elif limit and (not self.model.max_seq_length or self.model.max_seq_length > limit):
            # a tokenizer saved without model_max_length says 1e30: texts would overrun the positions
            self.model.max_seq_length = limit
        self.normalize = bool(normalize)
        getdim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(getdim() or 0)
        self.max_seq_length = int(self.model.max_seq_length or 512)
        tok = self.model.tokenizer
        self.vocab_size = len(tok)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        modalities = getattr(self.model, "modalities", None) or ["text"]
        self.takes_images = "image" in modalities
        # a media model would read a text that looks like an image URL or path as that image
        # (sentence-transformers' modality guess): its texts go in as explicit {"text": ...}
        self.explicit_text = any(m != "text" for m in modalities)

    def run_batch(self, items: list[Any]) -> list[EmbedOutput | BaseException]:
        out: list[EmbedOutput | BaseException | None] = [None] * len(items)
        texts, ids, errors = split_inputs(items, self.vocab_size)
        images = [i for i, x in enumerate(items) if not isinstance(x, str | list)]
        for i, err in errors.items():
            out[i] = err
        if texts:
            batch = [{"text": items[i]} if self.explicit_text else items[i] for i in texts]
            self._forward(self.model.preprocess(batch), texts, out)
        if ids:
            self._forward(self._id_features([items[i] for i in ids]), ids, out)
        if images and self.takes_images:
            self._forward(self.model.preprocess([items[i] for i in images]), images, out)
        elif images:
            for i in images:
                out[i] = BadRequestError("this model does not take image inputs", param="input", code="unsupported_input")
        return out  # type: ignore[return-value]

    def _id_features(self, seqs: list[list[int]]) -> dict[str, Any]:
        import torch

        ids, mask = pad_ids(seqs, self.max_seq_length, self.pad_id)
        input_ids = torch.from_numpy(ids)
        return {"input_ids": input_ids, "attention_mask": torch.from_numpy(mask), "token_type_ids": torch.zeros_like(input_ids)}

    def _forward(self, feats: dict[str, Any], rows: list[int], out: list[Any]) -> None:
        import torch

        mask = feats.get("attention_mask")  # images have none: they count no tokens
        counts = mask.sum(dim=1).tolist() if mask is not None else [0] * len(rows)
        device = self.model.device
        feats = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in feats.items()}
        with torch.inference_mode():
            emb = self.model(feats)["sentence_embedding"].float()
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, p=2, dim=1)
        vecs = emb.cpu().numpy()
        for j, i in enumerate(rows):
            out[i] = (vecs[j], int(counts[j]))


class CrossEncoderEngine:
    """A sentence-transformers CrossEncoder (num_labels 1): (query, document) → relevance score."""

    def __init__(self, path: str, device: str, max_seq_length: int | None, *, trust_remote_code: bool = False) -> None:
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(path, device=device, trust_remote_code=trust_remote_code)
        self.model.eval()
        if self.model.num_labels != 1:
            raise ValueError(
                f"a rerank model must have one output label (num_labels=1); this one has {self.model.num_labels}"
            )
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        self.max_seq_length = int(self.model.max_seq_length or 512)
        self.tokenizer = self.model.tokenizer

    def run_batch(self, pairs: list[tuple[str, str]]) -> list[tuple[float, int]]:
        import torch

        feats = self.model.preprocess([[q, d] for q, d in pairs])
        counts = feats["attention_mask"].sum(dim=1).tolist()
        device = self.model.device
        feats = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in feats.items()}
        with torch.inference_mode():
            scores = self.model(feats)["scores"].float()
            if self.model.activation_fn is not None:
                scores = self.model.activation_fn(scores)
        flat = scores.reshape(len(pairs), -1)[:, 0].cpu().tolist()
        return [(float(s), int(n)) for s, n in zip(flat, counts, strict=True)]

    def truncate(self, text: str, max_tokens: int) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_tokens:
            return text
        return self.tokenizer.decode(ids[:max_tokens])


class SequenceClassifierEngine:
    """A transformers sequence-classification model: text → one score per label."""

    def __init__(self, path: str, device: str, max_seq_length: int | None, *, trust_remote_code: bool = False) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=trust_remote_code).to(device).eval()
        )
        cfg = self.model.config
        self.labels = [str(cfg.id2label.get(i, f"LABEL_{i}")) for i in range(cfg.num_labels)]
        self.multi_label = cfg.problem_type == "multi_label_classification" or cfg.num_labels == 1
        limit = getattr(self.tokenizer, "model_max_length", None) or 512
        cap = getattr(cfg, "max_position_embeddings", None) or limit
        self.max_seq_length = int(max_seq_length or min(limit, cap))

    def run_batch(self, texts: list[str]) -> list[tuple[list[float], int]]:
        import torch

        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="pt"
        )
        counts = enc["attention_mask"].sum(dim=1).tolist()
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        with torch.inference_mode():
            logits = self.model(**enc).logits.float()
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        return [(row, int(n)) for row, n in zip(probs.cpu().tolist(), counts, strict=True)]


class SklearnClassifierEngine:
    """A scikit-learn text classifier saved as ``vectorizer.joblib`` + ``model.joblib``
    (e.g. alt-profanity-check's ``pkg:profanity_check/data``)."""

    def __init__(self, path: str, labels: list[str] | None) -> None:
        import joblib

        self.vectorizer = joblib.load(Path(path) / "vectorizer.joblib")
        self.model = joblib.load(Path(path) / "model.joblib")
        if not hasattr(self.model, "predict_proba"):
            raise ValueError(f"{path}/model.joblib has no predict_proba; a probabilistic classifier is needed")
        classes = [str(c) for c in getattr(self.model, "classes_", [])]
        if labels is not None and len(labels) != len(classes):
            raise ValueError(f"class_labels names {len(labels)} labels but the model has {len(classes)} classes")
        self.labels = list(labels) if labels is not None else classes
        self._analyze = self.vectorizer.build_analyzer() if hasattr(self.vectorizer, "build_analyzer") else None
        self.max_seq_length = None

    def run_batch(self, texts: list[str]) -> list[tuple[list[float], int]]:
        probs = self.model.predict_proba(self.vectorizer.transform(texts))
        counts = [len(self._analyze(t)) if self._analyze else len(t.split()) for t in texts]
        return [(row, n) for row, n in zip(np.asarray(probs, dtype=float).tolist(), counts, strict=True)]
