"""Embeddings on ONNX Runtime: the text-task layer over one ``embed_items`` primitive."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...settings import ConfigError
from ..text_tasks.base import BatchedTextTaskBackend
from ..text_tasks.inputs import pad_ids, split_inputs
from . import OnnxOptions
from .export import INPUTS, export_encoder, find_onnx, quantize_int8

__all__ = ["OnnxEmbedBackend"]

log = logging.getLogger(__name__)

EmbedOutput = tuple[np.ndarray, int]  # (vector, tokens used)


def _pooling(model_dir: Path) -> tuple[str, bool]:
    """(pooling mode, normalise) from the model's sentence-transformers modules (mean, no
    normalisation for a bare transformers directory)."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return "mean", False
    modules = json.loads(modules_file.read_text())
    mode, normalize = "mean", False
    for m in modules:
        kind = str(m.get("type", ""))
        if kind.endswith("Pooling"):
            cfg = json.loads((model_dir / m.get("path", "") / "config.json").read_text())
            if cfg.get("pooling_mode_cls_token"):
                mode = "cls"
            elif cfg.get("pooling_mode_mean_tokens"):
                mode = "mean"
            else:
                raise ConfigError(f"{model_dir}: only mean and CLS pooling run on the onnx engine ({cfg})")
        elif kind.endswith("Normalize"):
            normalize = True
    return mode, normalize


def _max_seq_length(model_dir: Path, tokenizer: Any) -> int:
    st = model_dir / "sentence_bert_config.json"
    if st.is_file():
        n = json.loads(st.read_text()).get("max_seq_length")
        if n:
            return int(n)
    return int(min(getattr(tokenizer, "model_max_length", 512) or 512, 512))


class OnnxEngine:
    """Tokenizer + ONNX Runtime session + pooling; ``run_batch`` is called on the batcher's thread."""

    def __init__(self, model_dir: Path, onnx_file: Path, threads: int | None, max_seq_length: int | None,
                 normalize: bool | None) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.pooling, default_norm = _pooling(model_dir)
        self.normalize = default_norm if normalize is None else normalize
        self.max_seq_length = max_seq_length or _max_seq_length(model_dir, self.tokenizer)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        unknown = [n for n in self.inputs if n not in INPUTS]
        if unknown:
            raise ConfigError(f"{onnx_file}: unexpected model inputs {unknown} (expected some of {list(INPUTS)})")
        self.vocab_size = len(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        probe = self._encode({"input_ids": np.array([[self.pad_id]]), "attention_mask": np.ones((1, 1), np.int64)})
        self.dimension = int(probe.shape[1])

    def _encode(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        mask = feats["attention_mask"].astype(np.int64)
        feed = {n: feats[n].astype(np.int64) if n in feats else np.zeros_like(mask) for n in self.inputs}
        hidden = self.session.run(None, feed)[0].astype(np.float32)
        if self.pooling == "cls":
            vecs = hidden[:, 0]
        else:
            m = mask[..., None].astype(np.float32)
            vecs = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        if self.normalize:
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return vecs

    def run_batch(self, items: list[str | list[int]]) -> list[EmbedOutput | BaseException]:
        out: list[EmbedOutput | BaseException | None] = [None] * len(items)
        texts, ids, errors = split_inputs(items, self.vocab_size)
        for i, err in errors.items():
            out[i] = err
        if texts:
            enc = self.tokenizer([items[i] for i in texts], padding=True, truncation=True,
                                 max_length=self.max_seq_length, return_tensors="np")
            self._fill(dict(enc), texts, out)
        if ids:
            input_ids, mask = pad_ids([items[i] for i in ids], self.max_seq_length, self.pad_id)  # type: ignore[misc]
            self._fill({"input_ids": input_ids, "attention_mask": mask}, ids, out)
        return [o if o is not None else RuntimeError("no output for this item") for o in out]

    def _fill(self, feats: dict[str, np.ndarray], rows: list[int], out: list[Any]) -> None:
        vecs = self._encode(feats)
        counts = feats["attention_mask"].sum(axis=1)
        for j, i in enumerate(rows):
            out[i] = (vecs[j], int(counts[j]))


class OnnxEmbedBackend(BatchedTextTaskBackend):
    options: OnnxOptions

    def load(self) -> None:
        mc = self.options
        model_dir = Path(self.spec.model_path)
        if not model_dir.is_dir():
            raise ConfigError(f"models.{self.spec.entry.name}: model directory '{model_dir}' does not exist")
        if self.spec.gpus and self.spec.entry.device != "cpu":
            raise ConfigError(f"models.{self.spec.entry.name}: work_mode onnx runs on the CPU; leave gpus empty")
        cache = Path(mc.onnx_cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "gpt-server", "onnx"))
        if mc.onnx_file:
            onnx_file = Path(mc.onnx_file)
            if not onnx_file.is_file():
                raise ConfigError(f"models.{self.spec.entry.name}.model_config.onnx_file: '{onnx_file}' does not exist")
        else:
            onnx_file = find_onnx(model_dir) or export_encoder(model_dir, cache)
        if mc.quantize == "int8":
            onnx_file = quantize_int8(onnx_file, cache, model_dir)
        engine = OnnxEngine(model_dir, onnx_file, mc.n_threads or self.spec.n_threads, mc.max_seq_length,
                            mc.normalize_embeddings)
        self.dimension = engine.dimension
        log.info("onnx %s (%s pooling, normalize=%s, %d dims)", onnx_file, engine.pooling, engine.normalize,
                 self.dimension)
        self.start_batcher(engine.run_batch, engine.max_seq_length)
