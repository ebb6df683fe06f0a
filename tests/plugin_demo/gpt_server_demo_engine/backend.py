"""The mean-pooling embeddings backend of the demo plug-in."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from gpt_server.backends.base import BackendSpec
from gpt_server.backends.text_tasks.base import TextTaskBackend
from gpt_server.errors import BadRequestError

from . import MeanPoolOptions


class MeanPoolBackend(TextTaskBackend):
    options: MeanPoolOptions

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        self.tokenizer: Any = None
        self.model: Any = None

    def load(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if self.options.n_threads:
            torch.set_num_threads(self.options.n_threads)
        self.tokenizer = AutoTokenizer.from_pretrained(self.spec.model_path)
        self.model = AutoModel.from_pretrained(self.spec.model_path).eval()
        self.dimension = int(self.model.config.hidden_size)

    @property
    def context_length(self) -> int | None:
        return self.options.max_length

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.options.max_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        vectors = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return vectors, [int(n) for n in batch["attention_mask"].sum(1)]

    async def embed_items(self, items: list[str | list[int]]) -> tuple[np.ndarray, list[int]]:
        if any(not isinstance(x, str) for x in items):
            raise BadRequestError("this engine takes text inputs only, not token ids", param="input")
        return await asyncio.to_thread(self._encode, [str(x) for x in items])
