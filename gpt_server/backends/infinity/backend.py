"""infinity: the worker starts infinity's own server (``infinity_emb v2``) on loopback from
a separate interpreter (``model_config.python``) and relays to it.

infinity_emb pins numpy<2 and sentence-transformers<4, so it cannot share this server's
environment; its server is a stable interface across its versions. infinity batches by
itself. Token counts in ``usage`` come from the model's own tokenizer here (infinity
reports characters), and dimensions / sorting / categories are applied by the shared
task layer, so answers have the same shape as the sentence-transformers backend's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel

from ...errors import (
    BadRequestError,
    GatewayError,
    ServiceUnavailableError,
    UpstreamError,
    error_from_body,
)
from ...procs import free_port
from ...protocol.kinds import Capability
from ...settings import ConfigError
from ..base import BackendSpec
from ..engine_process import EngineProcess, ProcessOptions
from ..text_tasks.base import TextTaskBackend
from . import InfinityOptions

__all__ = ["InfinityBackend", "STARTUP_TIMEOUT"]

STARTUP_TIMEOUT = 600.0


class InfinityBackend(TextTaskBackend):
    options: InfinityOptions

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        mc = self.options
        if not mc.python:
            raise ConfigError(
                f"models.{spec.entry.name}.model_config.python: work_mode infinity needs the path of a Python "
                "interpreter where 'infinity-emb[torch,server]==0.0.78' is installed (it pins numpy<2 and "
                "sentence-transformers<4, so it cannot live in this server's environment; see docs/embeddings.md)"
            )
        self.python = mc.python
        self.served = spec.entry.name
        self.max_batch_size = mc.max_batch_size or 32
        self.port = 0
        self.process: EngineProcess | None = None
        self.tokenizer: Any = None
        self.max_seq_length = mc.max_seq_length
        self._client: httpx.AsyncClient | None = None

    # ---- lifecycle ----------------------------------------------------------------
    def load(self) -> None:
        if not os.path.exists(self.python):
            raise ConfigError(f"models.{self.spec.entry.name}.model_config.python: '{self.python}' does not exist")
        self._load_tokenizer()
        self.port = free_port()
        self.process = EngineProcess(
            ProcessOptions(
                argv=self._command(),
                health_url=f"http://127.0.0.1:{self.port}/health",
                name=f"infinity:{self.served}",
                env=self._env(),
                unset_env=["PYTHONPATH"],  # never leak this server's packages into infinity's interpreter
                startup_timeout=STARTUP_TIMEOUT,
            )
        )
        self.process.start()
        try:
            self._probe()
        except Exception:
            self.close()
            raise

    def _command(self) -> list[str]:
        mc = self.options
        device = {"gpu": "cuda", "cuda": "cuda", "cpu": "cpu"}.get(self.spec.entry.device, "auto")
        cmd = [
            self.python, "-m", "infinity_emb.cli", "v2",
            "--model-id", self.spec.model_path,
            "--served-model-name", self.served,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--device", device,
            "--batch-size", str(self.max_batch_size),
            "--log-level", "warning",
            "--no-model-warmup",
        ]
        if mc.dtype:
            cmd += ["--dtype", mc.dtype]
        # infinity trusts the model's code by default: here only when the entry says so
        cmd.append("--trust-remote-code" if mc.trust_remote_code else "--no-trust-remote-code")
        return cmd + list(mc.engine_args or [])

    def _env(self) -> dict[str, str]:
        """Set on top of this process's environment."""
        env = {"DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "HF_HUB_OFFLINE": "1"}
        threads = self.options.n_threads or self.spec.n_threads
        if threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        return env

    def _load_tokenizer(self) -> None:
        from transformers import AutoConfig, AutoTokenizer

        path = self.spec.model_path
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=self.options.trust_remote_code)
        st_cfg = Path(path) / "sentence_bert_config.json"
        if self.max_seq_length is None and st_cfg.is_file():  # what sentence-transformers truncates at
            self.max_seq_length = json.loads(st_cfg.read_text()).get("max_seq_length")
        if self.max_seq_length is None:
            limit = getattr(self.tokenizer, "model_max_length", None)
            self.max_seq_length = limit if isinstance(limit, int) and limit < 1_000_000 else 512
        if self.kind == "moderation":
            cfg = AutoConfig.from_pretrained(path, trust_remote_code=self.options.trust_remote_code)
            self.set_labels([str(cfg.id2label.get(i, f"LABEL_{i}")) for i in range(cfg.num_labels)])

    def _probe(self) -> None:
        """Learn the embedding size from infinity itself."""
        if self.kind != "embedding":
            return
        r = httpx.post(
            f"http://127.0.0.1:{self.port}/embeddings", json={"model": self.served, "input": ["probe"]}, timeout=60
        )
        r.raise_for_status()
        self.dimension = len(r.json()["data"][0]["embedding"])

    def close(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.stop()

    def healthy(self) -> bool:
        return self.process is not None and self.process.healthy()

    @property
    def capacity(self) -> int:
        return self.max_batch_size

    @property
    def context_length(self) -> int | None:
        return self.max_seq_length

    # ---- relay --------------------------------------------------------------------
    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if not self.healthy():
            raise ServiceUnavailableError("infinity is not ready (starting or restarting)")
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=600.0)
        try:
            r = await self._client.post(path, json={"model": self.served, **body})
        except httpx.HTTPError as exc:
            raise UpstreamError(f"infinity is unreachable: {type(exc).__name__}") from exc
        if r.status_code != 200:
            try:
                detail = r.json()
            except ValueError:
                detail = None
            err = error_from_body(r.status_code, detail)
            if isinstance(detail, dict) and "detail" in detail:
                err = (BadRequestError if r.status_code < 500 else UpstreamError)(f"infinity: {detail['detail']}")
            raise err
        return r.json()

    async def _count(self, a: list[str], b: list[str] | None = None) -> list[int]:
        def run() -> list[int]:
            enc = self.tokenizer(a, b, truncation=True, max_length=self.max_seq_length) if b else self.tokenizer(
                a, truncation=True, max_length=self.max_seq_length
            )
            return [len(ids) for ids in enc["input_ids"]]

        return await asyncio.to_thread(run)

    async def embed_items(self, items: list[str | list[int]]) -> tuple[np.ndarray, list[int]]:
        if any(not isinstance(x, str) for x in items):
            raise BadRequestError("the infinity engine takes text inputs only, not token ids", param="input")
        texts = [x for x in items if isinstance(x, str)]
        body, counts = await asyncio.gather(
            self._post("/embeddings", {"input": texts, "encoding_format": "base64"}), self._count(texts)
        )
        rows = sorted(body["data"], key=lambda d: d["index"])
        vecs = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in rows])
        return vecs, counts

    async def score_pairs(self, query: str, documents: list[str], max_tokens_per_doc: int | None) -> tuple[list[float], int]:
        if max_tokens_per_doc:
            documents = await asyncio.to_thread(self._truncate_docs, documents, max_tokens_per_doc)
        body, counts = await asyncio.gather(
            self._post("/rerank", {"query": query, "documents": documents, "return_documents": False}),
            self._count([query] * len(documents), documents),
        )
        scores = [0.0] * len(documents)
        for r in body["results"]:
            scores[r["index"]] = float(r["relevance_score"])
        return scores, int(sum(counts))

    def _truncate_docs(self, documents: list[str], n: int) -> list[str]:
        out = []
        for d in documents:
            ids = self.tokenizer(d, add_special_tokens=False)["input_ids"]
            out.append(d if len(ids) <= n else self.tokenizer.decode(ids[:n]))
        return out

    async def classify_items(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        body, counts = await asyncio.gather(self._post("/classify", {"input": texts}), self._count(texts))
        rows = []
        for per_input in body["data"]:
            by_label = {str(d["label"]): float(d["score"]) for d in per_input}
            rows.append([by_label.get(lab, 0.0) for lab in self.labels])
        return rows, counts

    async def invoke(self, capability: Capability, payload: BaseModel) -> Any:
        try:
            return await super().invoke(capability, payload)
        except GatewayError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"infinity sent an unexpected answer: {type(exc).__name__}") from exc
