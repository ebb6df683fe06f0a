"""Relay backends: a remote OpenAI-compatible upstream, or an engine server we start ourselves.

``work_mode: openai`` relays to ``model_config.api_base``; ``vllm``, ``sglang``,
``lmdeploy-turbomind``, ``lmdeploy-pytorch``, ``trtllm`` (and ``llama_cpp_server``) start the
engine's own OpenAI-compatible server on a loopback port as a supervised child process and
relay to it. Both stream deltas through without buffering.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import httpx
from pydantic import BaseModel

from ...chat.images import inline_images
from ...chat.media import MediaFetcher
from ...errors import BadRequestError, NotFoundError, ServiceUnavailableError, UpstreamError
from ...procs import free_port
from ...protocol.embeddings import EMBED, EmbedPayload
from ...protocol.kinds import Capability, kind
from ...protocol.openai import RESERVED_TEMPLATE_KEYS
from ...protocol.rerank import RERANK, RerankPayload
from ...protocol.tokenize import DETOKENIZE, TOKENIZE, DetokenizePayload, TokenizePayload
from ...protocol.worker import Event, GenerateRequest
from ...settings import ConfigError
from ...web.internal import SECRET_ENV
from ..base import Backend, BackendSpec, InvokeResult, payload_as, runtime_lora_unsupported
from ..engine_process import EngineProcess, ProcessOptions
from ..text_tasks.media import refuse_images
from ..text_tasks.results import rerank_response
from .client import UpstreamClient
from .commands import LORA_ENGINES, RUNTIME_LORA_ENGINES, LaunchSpec, build_command
from .options import EngineServerOptions, Flavor, RelayOptions, UpstreamOptions
from .translate import ENGINE_FLAVORS

__all__ = ["RelayBackend", "OpenAIRelayBackend", "EngineServerBackend"]

log = logging.getLogger(__name__)

_DEFAULT_CAPACITY = 64
_DEFAULT_TIMEOUT = 600.0
_DEFAULT_STARTUP = 900.0


# what a relay can carry today; the model's kind picks among them
_RELAYED = frozenset({"chat", "completion", "embed", "rerank"})
# engines whose own server answers vLLM's /tokenize and /detokenize at its root
_TOKENIZING_ENGINES = frozenset({"vllm", "sglang"})


class RelayBackend(Backend):
    """Common part: capabilities by model kind, chat/completion streams, embeddings."""

    options: RelayOptions

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        caps = kind(spec.entry.kind).capabilities & _RELAYED
        if not caps:
            raise ConfigError(
                f"model_type '{spec.entry.kind}' cannot be relayed (chat LLMs, embeddings and rerankers can)"
            )
        self.capabilities = caps
        self.client: UpstreamClient | None = None
        self.upstream_model = spec.entry.name
        self.fetcher = MediaFetcher(self.options.media_policy())
        # LoRA adapters the engine serves under their own names: each is a model id of ours
        self.adapters: list[str] = []

    @property
    def flavor(self) -> Flavor:
        return "openai"

    @property
    def extra_model_names(self) -> list[str]:
        """LoRA adapters are model ids of their own (``parent``: this entry)."""
        return list(self.adapters)

    @property
    def capacity(self) -> int:
        return self.options.n_parallel or _DEFAULT_CAPACITY

    @property
    def context_length(self) -> int | None:
        mc = self.options
        return mc.max_model_len or mc.n_ctx

    def _timeout(self) -> float:
        return self.options.upstream_timeout or _DEFAULT_TIMEOUT

    def _ready_client(self) -> UpstreamClient:
        if self.client is None or not self.healthy():
            raise ServiceUnavailableError("the upstream engine is not ready (starting or restarting)")
        return self.client

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Event]:
        client = self._ready_client()
        max_n = self.options.max_n
        if max_n is not None and request.params.n > max_n:
            raise BadRequestError(f"n must be at most {max_n} for this model", param="n")
        if request.kind == "chat" and request.messages:
            # the engine never fetches: remote images come inline, every image passed the pixel caps
            request = request.model_copy(update={"messages": await inline_images(request.messages, self.fetcher)})
        # an adapter's name is the engine's model id for it
        model = request.model if request.model in self.adapters else self.upstream_model
        async for ev in client.generate(request, model):
            yield ev

    async def invoke(self, capability: Capability, payload: BaseModel) -> InvokeResult:
        if capability not in self.capabilities:
            return await super().invoke(capability, payload)
        if capability == TOKENIZE:
            return await self._tokenize(payload_as(payload, TokenizePayload))
        if capability == DETOKENIZE:
            return await self._detokenize(payload_as(payload, DetokenizePayload))
        if capability == RERANK:
            return await self._rerank(payload_as(payload, RerankPayload))
        if capability != EMBED:
            return await super().invoke(capability, payload)
        p = payload_as(payload, EmbedPayload)
        refuse_images(p.inputs, "relayed embedding models take text here")
        body: dict[str, Any] = {"model": self.upstream_model, "input": p.inputs, "encoding_format": p.encoding_format}
        if p.dimensions is not None:
            body["dimensions"] = p.dimensions
        data = await self._ready_client().post_json("/embeddings", body)
        _check_embeddings(data, len(p.inputs))
        _encode_embeddings(data, p.encoding_format)
        data.pop("model", None)  # the gateway stamps the name the client used
        data.setdefault("object", "list")
        return data

    async def _rerank(self, p: RerankPayload) -> InvokeResult:
        """The engine's own rerank API (vLLM, SGLang, Jina/Cohere-style upstreams, GPT Server:
        ``<base>/rerank``; TEI: ``/rerank`` at its root); ordering, ``top_n`` and documents are ours."""
        if p.max_tokens_per_doc is not None:
            raise BadRequestError(
                "max_tokens_per_doc is not supported through this relay", param="max_tokens_per_doc",
                code="unsupported_parameter",
            )
        if not p.documents:
            return rerank_response([], [], top_n=p.top_n, return_documents=p.return_documents, tokens=0)
        client = self._ready_client()
        if self.flavor == "tei":
            raw = await client.post_any(self._root_url("/rerank"), {"query": p.query, "texts": p.documents})
            items, tokens = raw, 0
        else:
            body = {"model": self.upstream_model, "query": p.query, "documents": p.documents, "return_documents": False}
            data = await client.post_json("/rerank", body)
            items = data.get("results")
            usage = data.get("usage")
            if not isinstance(usage, dict):
                usage = {}
            tokens = int(usage.get("total_tokens") or usage.get("prompt_tokens") or 0)
        scores = _rerank_scores(items, len(p.documents))
        return rerank_response(scores, p.documents, top_n=p.top_n, return_documents=p.return_documents, tokens=tokens)

    def _root_url(self, path: str) -> str:
        """``path`` at the upstream's root (its OpenAI routes are under /v1, these are not)."""
        return self._ready_client().base_url.removesuffix("/v1") + path

    async def _tokenize(self, p: TokenizePayload) -> InvokeResult:
        body: dict[str, Any] = {"model": self.upstream_model, **p.model_dump(exclude_none=True, exclude={"tools"})}
        if p.messages is not None:
            body["messages"] = await inline_images(p.messages, self.fetcher)
        body["chat_template_kwargs"] = {k: v for k, v in p.chat_template_kwargs.items() if k not in RESERVED_TEMPLATE_KEYS}
        if p.tools is not None:
            body["tools"] = p.tools.tools
        if p.messages is None:  # template options mean nothing to a prompt
            for key in ("add_generation_prompt", "chat_template_kwargs"):
                body.pop(key, None)
        data = await self._ready_client().post_json(self._root_url("/tokenize"), body)
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise UpstreamError("the engine's /tokenize answered no token list")
        out: dict[str, Any] = {"count": len(tokens), "max_model_len": data.get("max_model_len") or self.context_length}
        out["tokens"] = tokens
        if p.return_token_strs and isinstance(data.get("token_strs"), list):
            out["token_strs"] = data["token_strs"]
        return out

    async def _detokenize(self, p: DetokenizePayload) -> InvokeResult:
        body = {"model": self.upstream_model, "tokens": p.tokens}
        data = await self._ready_client().post_json(self._root_url("/detokenize"), body)
        if not isinstance(data.get("prompt"), str):
            raise UpstreamError("the engine's /detokenize answered no prompt")
        return {"prompt": data["prompt"]}

    def close(self) -> None:
        self.fetcher.close()
        if self.client is not None:
            self.client.close()
            self.client = None


def _rerank_scores(items: Any, n_docs: int) -> list[float]:
    """One score per document, by index, from ``[{index, relevance_score | score}]``."""
    scores: list[float | None] = [None] * n_docs
    for item in items if isinstance(items, list) else []:
        i = item.get("index") if isinstance(item, dict) else None
        score = item.get("relevance_score", item.get("score")) if isinstance(item, dict) else None
        if isinstance(i, int) and 0 <= i < n_docs and isinstance(score, (int, float)):
            scores[i] = float(score)
    if any(s is None for s in scores):
        raise UpstreamError(f"the upstream's rerank answer does not score all {n_docs} documents")
    return [s for s in scores if s is not None]


def _check_embeddings(data: dict[str, Any], n_inputs: int) -> None:
    """One flat vector (or base64 string) per input, else the upstream is misconfigured."""
    items = data.get("data")
    if not isinstance(items, list) or len(items) != n_inputs:
        raise UpstreamError(f"upstream returned {len(items) if isinstance(items, list) else 'no'} embeddings for {n_inputs} inputs")
    for item in items:
        vec = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(vec, str):
            continue
        if not isinstance(vec, list) or not vec or not isinstance(vec[0], (int, float)):
            raise UpstreamError(
                "upstream returned token-level (unpooled) embeddings; configure pooling on the upstream server",
                code="upstream_bad_embeddings",
            )


def _encode_embeddings(data: dict[str, Any], encoding_format: str) -> None:
    """Each vector in the encoding the client asked for: upstreams that ignore
    ``encoding_format`` (llama.cpp's server answers floats to a base64 request) are
    converted here, base64 being little-endian float32 as OpenAI sends it."""
    for item in data["data"]:
        vec = item["embedding"]
        if encoding_format == "base64" and isinstance(vec, list):
            item["embedding"] = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
        elif encoding_format == "float" and isinstance(vec, str):
            raw = base64.b64decode(vec)
            item["embedding"] = list(struct.unpack(f"<{len(raw) // 4}f", raw))


class OpenAIRelayBackend(RelayBackend):
    """``work_mode: openai``: any OpenAI-compatible URL (``model_config.api_base``)."""

    options: UpstreamOptions

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        self.adapters = list(self.options.lora_adapters or [])

    def load(self) -> None:
        mc = self.options
        if not mc.api_base:
            raise ConfigError(f"models.{self.spec.entry.name}.model_config.api_base is required with work_mode openai")
        key = None
        if mc.api_key_env:
            key = os.environ.get(mc.api_key_env)
            if not key:
                raise ConfigError(
                    f"models.{self.spec.entry.name}.model_config.api_key_env: environment variable "
                    f"'{mc.api_key_env}' is not set"
                )
        self.upstream_model = mc.model_name_or_path
        self.client = UpstreamClient(mc.api_base, key, self._timeout(), name="the upstream engine", flavor=self.flavor)

    @property
    def flavor(self) -> Flavor:
        return self.options.api_flavor


class EngineServerBackend(RelayBackend):
    """vLLM, SGLang, LMDeploy, TensorRT-LLM (and llama.cpp's server) as a managed child."""

    host = "127.0.0.1"
    options: EngineServerOptions

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        if spec.entry.work_mode in _TOKENIZING_ENGINES:
            self.capabilities = self.capabilities | (kind(spec.entry.kind).capabilities & {TOKENIZE, DETOKENIZE})
        self.process: EngineProcess | None = None
        self._tmpdir: str | None = None
        if self.options.lora and spec.entry.work_mode in LORA_ENGINES:
            self.adapters = list(self.options.lora)
        # adapters loaded at run time (name → path): given back to the engine after a restart
        self.runtime_adapters: dict[str, str] = {}
        self._api_key = ""

    @property
    def flavor(self) -> Flavor:
        return ENGINE_FLAVORS.get(self.spec.entry.work_mode or "", "openai")

    def launch_spec(self, port: int, api_key: str | None) -> LaunchSpec:
        entry = self.spec.entry
        mc = self.options
        template_file = None
        if mc.chat_template:
            self._tmpdir = self._tmpdir or tempfile.mkdtemp(prefix="gpt-server-engine-")
            template_file = os.path.join(self._tmpdir, "chat_template.jinja")
            with open(template_file, "w", encoding="utf-8") as f:
                f.write(mc.chat_template)
        return LaunchSpec(
            engine=entry.work_mode or "",
            model_path=self.spec.model_path,
            served_name=entry.name,
            port=port,
            config=mc,
            gpus=list(self.spec.gpus),
            host=self.host,
            api_key=api_key,
            chat_template_file=template_file,
            embedding=entry.kind == "embedding",
            rerank=entry.kind == "rerank",
        )

    def _engine_env(self) -> dict[str, str]:
        mc = self.options
        env = dict(mc.engine_env or {})
        if self.spec.gpus:
            env.setdefault("CUDA_VISIBLE_DEVICES", ",".join(str(g) for g in self.spec.gpus))
        if self.spec.n_threads:
            env.setdefault("OMP_NUM_THREADS", str(self.spec.n_threads))
        return env

    def load(self) -> None:
        mc = self.options
        port = mc.engine_port or free_port(self.host)
        api_key = "gs-" + secrets.token_hex(16)  # only we may talk to the engine
        command = build_command(self.launch_spec(port, api_key))
        base = f"http://{self.host}:{port}"
        self.process = EngineProcess(
            ProcessOptions(
                argv=command.argv,
                health_url=base + command.health_path,
                name=f"{self.spec.entry.work_mode}:{self.spec.entry.name}",
                env={**self._engine_env(), **command.env},
                unset_env=[SECRET_ENV],  # the engine has no business with the internal secret
                headers={"Authorization": f"Bearer {api_key}"},
                secrets=[api_key],
                startup_timeout=mc.startup_timeout or _DEFAULT_STARTUP,
                after_restart=self._restore_adapters,
            )
        )
        self._api_key = api_key
        self.process.start()
        self.client = UpstreamClient(
            base + "/v1", api_key, self._timeout(), name=f"the {self.spec.entry.work_mode} engine", flavor=self.flavor
        )

    def healthy(self) -> bool:
        return self.process is not None and self.process.healthy()

    # ---- LoRA adapters at run time (vLLM: /v1/load_lora_adapter, /v1/unload_lora_adapter) ------
    def _check_runtime_lora(self) -> None:
        engine = self.spec.entry.work_mode or ""
        if engine not in RUNTIME_LORA_ENGINES:
            raise runtime_lora_unsupported(engine)
        if not self.options.runtime_lora:
            raise BadRequestError(
                f"model '{self.spec.entry.name}' (engine '{engine}') was started without run-time LoRA: set "
                "model_config.runtime_lora: true", param="model", code="runtime_lora_disabled",
            )

    async def load_adapter(self, name: str, path: str) -> None:
        self._check_runtime_lora()
        if name in self.adapters:
            raise BadRequestError(f"adapter '{name}' is already served by this model", param="name", code="adapter_exists")
        if not await asyncio.to_thread(os.path.isdir, path):
            raise BadRequestError(
                f"LoRA adapter path '{path}' is not a directory on the worker's host", param="path", code="adapter_path_not_found"
            )
        await self._ready_client().post_any("/load_lora_adapter", {"lora_name": name, "lora_path": path})
        self.runtime_adapters[name] = path
        self.adapters.append(name)
        log.info("LoRA adapter %s loaded from %s", name, path)

    async def unload_adapter(self, name: str) -> None:
        self._check_runtime_lora()
        if name not in self.runtime_adapters:
            raise NotFoundError(f"no adapter '{name}' was loaded at run time", param="name", code="adapter_not_found")
        # off our list first: no new request is sent for it; those on their way finish
        self.adapters.remove(name)
        path = self.runtime_adapters.pop(name)
        try:
            await self._ready_client().post_any("/unload_lora_adapter", {"lora_name": name})
        except NotFoundError:
            pass  # the engine restarted without it meanwhile
        except Exception:
            self.adapters.append(name)
            self.runtime_adapters[name] = path
            raise
        log.info("LoRA adapter %s unloaded", name)

    def _restore_adapters(self) -> None:
        """After an engine restart (supervisor thread): load the run-time adapters again."""
        if not self.runtime_adapters or self.client is None:
            return
        headers = {"Authorization": f"Bearer {self._api_key}"}
        with httpx.Client(base_url=self.client.base_url, headers=headers, timeout=120) as c:
            for name, path in list(self.runtime_adapters.items()):
                r = c.post("/load_lora_adapter", json={"lora_name": name, "lora_path": path})
                if r.status_code != 200:
                    log.error("LoRA adapter %s could not be loaded again after the engine restart: %s", name, r.text[:300])
                    self.adapters.remove(name)
                    self.runtime_adapters.pop(name, None)
                else:
                    log.info("LoRA adapter %s loaded again after the engine restart", name)

    def close(self) -> None:
        super().close()
        if self.process is not None:
            self.process.stop()
            self.process = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
