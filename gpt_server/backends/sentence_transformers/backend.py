"""sentence-transformers in process: SentenceTransformer (embeddings; a CLIP-style model
embeds images too, into the same space), CrossEncoder (rerank), a sequence-classification
model or a scikit-learn text classifier (moderation / classify). Every forward pass goes
through the dynamic batcher.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from ...chat.media import MediaFetcher
from ...protocol.embeddings import EMBED_IMAGE
from ...settings import ConfigError
from ..base import BackendSpec
from ..devices import torch_on_gpu
from ..text_tasks.base import BatchedTextTaskBackend
from . import SentenceTransformersOptions
from .engines import (
    CrossEncoderEngine,
    EmbedEngine,
    SequenceClassifierEngine,
    SklearnClassifierEngine,
    is_sklearn_dir,
    torch_device,
)

__all__ = ["SentenceTransformersBackend"]

log = logging.getLogger(__name__)


class SentenceTransformersBackend(BatchedTextTaskBackend):
    options: SentenceTransformersOptions

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        self.engine: Any = None

    # ---- lifecycle ----------------------------------------------------------------
    def load(self) -> None:
        mc = self.options
        path = self.spec.model_path
        if not os.path.exists(path):
            raise ConfigError(f"models.{self.spec.entry.name}: model path '{path}' does not exist")
        threads = mc.n_threads or self.spec.n_threads
        if threads:
            import torch

            torch.set_num_threads(threads)
        if self.kind == "moderation" and is_sklearn_dir(path):
            self.engine = SklearnClassifierEngine(path, mc.class_labels)
        else:
            self.engine = self._load_torch_engine(path)
        if self.kind == "embedding":
            self.dimension = self.engine.dimension
            if self.engine.takes_images:
                self.image_fetcher = MediaFetcher(mc.media_policy())
                self.capabilities = self.capabilities | {EMBED_IMAGE}
                log.info("the model embeds images too (modalities %s)", self.engine.model.modalities)
        if self.kind == "moderation":
            self.set_labels(self.engine.labels)
            log.info("labels %s → categories %s", self.engine.labels, self.categories)
        self.start_batcher(self.engine.run_batch, self.engine.max_seq_length)

    def _load_torch_engine(self, path: str) -> Any:
        mc = self.options
        device = "cuda" if torch_on_gpu(self.spec) else torch_device(self.spec.entry.device)
        trust = mc.trust_remote_code
        if self.kind == "embedding":
            return EmbedEngine(path, device, mc.max_seq_length, mc.normalize_embeddings, trust_remote_code=trust)
        if self.kind == "rerank":
            return CrossEncoderEngine(path, device, mc.max_seq_length, trust_remote_code=trust)
        return SequenceClassifierEngine(path, device, mc.max_seq_length, trust_remote_code=trust)

    def close(self) -> None:
        super().close()
        self.engine = None

    # ---- primitives ---------------------------------------------------------------
    async def score_pairs(self, query: str, documents: list[str], max_tokens_per_doc: int | None) -> tuple[list[float], int]:
        if max_tokens_per_doc:
            cut = self.engine.truncate
            documents = await asyncio.to_thread(lambda: [cut(d, max_tokens_per_doc) for d in documents])
        outs = await self._batcher().submit([(query, d) for d in documents])
        return [s for s, _ in outs], int(sum(n for _, n in outs))

    async def classify_items(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        outs = await self._batcher().submit(texts)
        return [s for s, _ in outs], [n for _, n in outs]
