"""In-process baselines: the same engines the workers use, driven by an asyncio harness.

``DirectLlama`` renders the model's chat template and tokenizes in a thread (as the
llama.cpp backend does), submits a ``Sequence`` to ``LlamaEngine`` and times the
events the engine thread reports. ``DirectST`` calls ``SentenceTransformer.encode``
on one engine thread (requests queue for it, as callers sharing one model would).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .loadgen import RoundSpec, _Timer
from .metrics import Sample
from .prompts import chat_prompt, embed_inputs

__all__ = ["DirectLlama", "DirectST"]


class DirectLlama:
    """gpt_server's LlamaEngine called directly (same GGUF, n_parallel and threads as the worker,
    and as its default on the CPU, the weights in huge pages)."""

    def __init__(self, model_path: str, n_parallel: int, n_threads: int, n_ctx: int = 2048) -> None:
        from gpt_server.backends.llama_cpp.engine import EngineOptions, LlamaEngine
        from gpt_server.chat.templates import ChatTemplate

        self.engine = LlamaEngine(
            EngineOptions(model_path=model_path, n_ctx=n_ctx, n_parallel=n_parallel, n_threads=n_threads, hugepages=True)
        )
        meta = self.engine.metadata()

        def special(key: str) -> str:
            tid = meta.get(f"tokenizer.ggml.{key}_token_id")
            return self.engine.token_text(int(tid)) if tid is not None and tid.isdigit() else ""

        self.template = ChatTemplate(self.engine.chat_template(), bos_token=special("bos"), eos_token=special("eos"))

    def _tokens(self, text: str) -> list[int]:
        rendered = self.template.render([{"role": "user", "content": text}])
        bos = self.template.bos_token
        add_bos = self.engine.add_bos() and not (bos and rendered.startswith(bos))
        return self.engine.tokenize(rendered, add_special=add_bos, parse_special=True)

    async def open(self, concurrency: int, timeout_s: float) -> None:
        return None

    async def close(self) -> None:
        return None

    def shutdown(self) -> None:
        self.engine.close()

    async def events(self, toks: list[int], max_tokens: int, temperature: float = 0.0) -> AsyncIterator[Any]:
        """Generation of ``toks`` on the engine thread (greedy at temperature 0): its
        ``SeqEvent``s up to the one that finishes (or carries an error)."""
        from gpt_server.backends.llama_cpp.engine import SeqEvent, Sequence
        from gpt_server.protocol.worker import SamplingParams

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[SeqEvent] = asyncio.Queue()
        cancelled = threading.Event()
        seq = Sequence(
            index=0, prompt=toks, params=SamplingParams(max_tokens=max_tokens, temperature=temperature), max_tokens=max_tokens,
            sink=lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev), cancelled=cancelled,
        )
        self.engine.submit([seq])
        try:
            while True:
                ev = await queue.get()
                yield ev
                if ev.error is not None or ev.finish_reason is not None:
                    return
        finally:
            cancelled.set()
            self.engine.wake()

    async def __call__(self, i: int, spec: RoundSpec) -> Sample:
        timer = _Timer()
        toks = await asyncio.to_thread(self._tokens, chat_prompt(i))
        async with contextlib.aclosing(self.events(toks, spec.max_tokens, spec.temperature)) as events:
            async for ev in events:
                if ev.text:
                    timer.content()
                if ev.error is not None:
                    return Sample(ok=False, e2e=0.0, error=ev.error)
                if ev.finish_reason is not None:
                    return timer.sample(ev.completion_tokens, spec.stream)
        return Sample(ok=False, e2e=0.0, error="the engine ended without a finish")


class DirectST:
    """sentence-transformers ``encode`` in process, one engine thread."""

    def __init__(self, model_path: str, n_threads: int) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(n_threads)
        self.model = SentenceTransformer(model_path, device="cpu")
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="st-engine")

    async def open(self, concurrency: int, timeout_s: float) -> None:
        return None

    async def close(self) -> None:
        return None

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False)

    def encode(self, texts: list[str]) -> Any:
        return self.model.encode(texts, show_progress_bar=False, convert_to_numpy=True)

    async def __call__(self, i: int, spec: RoundSpec) -> Sample:
        timer = _Timer()
        texts = embed_inputs(i, spec.items)
        try:
            out = await asyncio.get_running_loop().run_in_executor(self.pool, self.encode, texts)
        except Exception as exc:  # noqa: BLE001 - a failed call is a failed sample
            return Sample(ok=False, e2e=0.0, error=f"{type(exc).__name__}: {exc}"[:300])
        if len(out) != len(texts):
            return Sample(ok=False, e2e=0.0, error="wrong number of embeddings")
        return timer.sample(len(texts), False)
