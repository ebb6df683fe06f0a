"""Launch commands of engines' own OpenAI-compatible servers (pure functions, one per engine).

Each function turns the model entry into the engine's documented command line. Options an
engine has no flag for are refused with a ``ConfigError`` naming the key, so a config never
silently loses a setting; anything else goes through ``engine_args`` verbatim.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from ...settings import ConfigError
from ..llama_cpp.buffers import server_argv
from .engine_flags import extra_flags
from .options import EngineServerOptions

__all__ = [
    "LaunchSpec",
    "EngineCommand",
    "LAUNCHERS",
    "LORA_ENGINES",
    "RUNTIME_LORA_ENGINES",
    "HEALTH_PATHS",
    "API_KEY_ENV",
    "build_command",
    "engine_python",
]


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a launch command depends on."""

    engine: str
    model_path: str
    served_name: str
    port: int
    config: EngineServerOptions
    gpus: list[int] = field(default_factory=list)
    host: str = "127.0.0.1"
    api_key: str | None = None
    chat_template_file: str | None = None
    embedding: bool = False
    rerank: bool = False  # a cross-encoder behind the engine's rerank/score API

    @property
    def pooling(self) -> bool:
        return self.embedding or self.rerank

    @property
    def tensor_parallel(self) -> int:
        return max(1, len(self.gpus))


@dataclass(frozen=True)
class EngineCommand:
    argv: list[str]
    health_path: str
    env: dict[str, str] = field(default_factory=dict)  # on top of the engine's environment


# engines that read their API key from the environment: it stays off the command line, which
# any user of the host can read (ps, /proc/<pid>/cmdline); SGLang and LMDeploy take it on argv only
API_KEY_ENV: dict[str, str] = {
    "vllm": "VLLM_API_KEY",
    "llama_cpp_server": "API_KEY",  # its ServerSettings are pydantic-settings: read from the environment
}


# engines that serve each LoRA adapter under its own model name (the request's model picks it)
LORA_ENGINES = frozenset({"vllm", "sglang", "lmdeploy-pytorch"})
# engines whose server loads and unloads adapters while it runs (model_config.runtime_lora)
RUNTIME_LORA_ENGINES = frozenset({"vllm"})

HEALTH_PATHS: dict[str, str] = {
    "vllm": "/health",
    "sglang": "/health",
    "lmdeploy-turbomind": "/health",
    "lmdeploy-pytorch": "/health",
    "trtllm": "/health",
    "llama_cpp_server": "/v1/models",
}


def engine_python(config: EngineServerOptions) -> str:
    """The interpreter of the engine's environment (``model_config.python``), else ours."""
    return config.python or sys.executable


def _script(config: EngineServerOptions, name: str) -> str:
    """A console script installed beside the engine's interpreter."""
    return os.path.join(os.path.dirname(engine_python(config)), name)


def _refuse(engine: str, key: str, hint: str = "pass the engine's own flag in engine_args") -> None:
    raise ConfigError(f"model_config.{key}: not supported by engine '{engine}' ({hint})")


def _lora_pairs(lora: dict[str, str] | None) -> list[str]:
    return [f"{name}={path}" for name, path in (lora or {}).items()]


def _vllm(s: LaunchSpec) -> list[str]:
    c = s.config
    argv = [
        engine_python(c), "-m", "vllm.entrypoints.openai.api_server",
        "--model", s.model_path, "--served-model-name", s.served_name,
        "--host", s.host, "--port", str(s.port),
        "--tensor-parallel-size", str(s.tensor_parallel),
    ]
    if c.max_model_len or c.n_ctx:
        argv += ["--max-model-len", str(c.max_model_len or c.n_ctx)]
    if c.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", str(c.gpu_memory_utilization)]
    if c.dtype:
        argv += ["--dtype", c.dtype]
    if c.enable_prefix_caching is not None:
        argv.append("--enable-prefix-caching" if c.enable_prefix_caching else "--no-enable-prefix-caching")
    if c.n_parallel:
        argv += ["--max-num-seqs", str(c.n_parallel)]
    if c.lora:
        argv += ["--enable-lora", "--lora-modules", *_lora_pairs(c.lora)]
    if c.tool_call_parser:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", c.tool_call_parser]
    if c.reasoning_parser:
        argv += ["--reasoning-parser", c.reasoning_parser]
    if s.chat_template_file:
        argv += ["--chat-template", s.chat_template_file]
    if s.pooling:  # embeddings, or a cross-encoder's /rerank and /score
        if c.lora:
            _refuse(s.engine, "lora", "LoRA adapters are for generating models")
        argv += ["--runner", "pooling"]
    return argv  # the API key: API_KEY_ENV


def _sglang(s: LaunchSpec) -> list[str]:
    c = s.config
    argv = [
        engine_python(c), "-m", "sglang.launch_server",
        "--model-path", s.model_path, "--served-model-name", s.served_name,
        "--host", s.host, "--port", str(s.port), "--tp-size", str(s.tensor_parallel),
    ]
    if c.max_model_len or c.n_ctx:
        argv += ["--context-length", str(c.max_model_len or c.n_ctx)]
    if c.gpu_memory_utilization is not None:
        argv += ["--mem-fraction-static", str(c.gpu_memory_utilization)]
    if c.dtype:
        argv += ["--dtype", c.dtype]
    if c.enable_prefix_caching is False:
        argv.append("--disable-radix-cache")
    if c.n_parallel:
        argv += ["--max-running-requests", str(c.n_parallel)]
    if c.lora:
        argv += ["--enable-lora", "--lora-paths", *_lora_pairs(c.lora)]
    if c.tool_call_parser:
        argv += ["--tool-call-parser", c.tool_call_parser]
    if c.reasoning_parser:
        argv += ["--reasoning-parser", c.reasoning_parser]
    if s.chat_template_file:
        argv += ["--chat-template", s.chat_template_file]
    if s.pooling:  # SGLang serves embeddings and a cross-encoder's /v1/rerank with --is-embedding
        argv.append("--is-embedding")
    if s.api_key:
        argv += ["--api-key", s.api_key]
    return argv


def _no_rerank(s: LaunchSpec) -> None:
    if s.rerank:
        raise ConfigError(f"model_type rerank: engine '{s.engine}' has no rerank API (use vllm, sglang or openai)")


def _lmdeploy(s: LaunchSpec) -> list[str]:
    _no_rerank(s)
    c = s.config
    backend = "pytorch" if s.engine == "lmdeploy-pytorch" else "turbomind"
    argv = [
        _script(c, "lmdeploy"), "serve", "api_server", s.model_path,
        "--server-name", s.host, "--server-port", str(s.port),
        "--model-name", s.served_name, "--backend", backend, "--tp", str(s.tensor_parallel),
    ]
    if c.max_model_len or c.n_ctx:
        argv += ["--session-len", str(c.max_model_len or c.n_ctx)]
    if c.gpu_memory_utilization is not None:
        argv += ["--cache-max-entry-count", str(c.gpu_memory_utilization)]
    if c.dtype:
        argv += ["--dtype", c.dtype]
    if c.enable_prefix_caching:
        argv.append("--enable-prefix-caching")
    if c.n_parallel:
        argv += ["--max-batch-size", str(c.n_parallel)]
    if c.lora:
        if backend != "pytorch":
            _refuse(s.engine, "lora", "LoRA adapters need work_mode lmdeploy-pytorch")
        argv += ["--adapters", *_lora_pairs(c.lora)]
    if c.tool_call_parser:
        argv += ["--tool-call-parser", c.tool_call_parser]
    if c.reasoning_parser:
        argv += ["--reasoning-parser", c.reasoning_parser]
    if s.chat_template_file:
        _refuse(s.engine, "chat_template", "LMDeploy takes a JSON chat-template config: use engine_args")
    if s.api_key:
        argv += ["--api-keys", s.api_key]
    return argv


def _trtllm(s: LaunchSpec) -> list[str]:
    _no_rerank(s)
    c = s.config
    argv = [
        _script(c, "trtllm-serve"), s.model_path,
        "--host", s.host, "--port", str(s.port), "--tp_size", str(s.tensor_parallel),
        "--served_model_name", s.served_name,
    ]
    if c.max_model_len or c.n_ctx:
        argv += ["--max_seq_len", str(c.max_model_len or c.n_ctx)]
    if c.gpu_memory_utilization is not None:
        argv += ["--kv_cache_free_gpu_memory_fraction", str(c.gpu_memory_utilization)]
    if c.n_parallel:
        argv += ["--max_batch_size", str(c.n_parallel)]
    if c.reasoning_parser:
        argv += ["--reasoning_parser", c.reasoning_parser]
    if c.tool_call_parser:
        argv += ["--tool_parser", c.tool_call_parser]
    for key in ("dtype", "lora", "enable_prefix_caching"):
        if getattr(c, key) is not None:
            _refuse(s.engine, key, "set it in a --config YAML through engine_args")
    if s.chat_template_file:
        _refuse(s.engine, "chat_template")
    return argv


def _llama_cpp_server(s: LaunchSpec) -> list[str]:
    """llama-cpp-python's own server (``pip install llama-cpp-python[server]``)."""
    _no_rerank(s)
    c = s.config
    argv = [
        *server_argv(engine_python(c), c.repack), "--model", s.model_path,
        "--model_alias", s.served_name, "--host", s.host, "--port", str(s.port),
    ]
    if c.max_model_len or c.n_ctx:
        argv += ["--n_ctx", str(c.max_model_len or c.n_ctx)]
    if c.n_threads:
        argv += ["--n_threads", str(c.n_threads), "--n_threads_batch", str(c.n_threads)]
    if c.n_batch:
        argv += ["--n_batch", str(c.n_batch)]
    n_gpu = c.n_gpu_layers if c.n_gpu_layers is not None else (-1 if s.gpus else None)
    if n_gpu is not None:
        argv += ["--n_gpu_layers", str(n_gpu)]
    if s.embedding:
        argv += ["--embedding", "true"]
    if c.lora:
        if len(c.lora) != 1:
            _refuse(s.engine, "lora", "llama.cpp's server takes one adapter")
        argv += ["--lora_path", next(iter(c.lora.values()))]
    for key in ("dtype", "gpu_memory_utilization", "enable_prefix_caching", "tool_call_parser", "reasoning_parser"):
        if getattr(c, key) is not None:
            _refuse(s.engine, key)
    if s.chat_template_file:
        _refuse(s.engine, "chat_template", "use --chat_format through engine_args")
    return argv  # the API key: API_KEY_ENV


LAUNCHERS: dict[str, Callable[[LaunchSpec], list[str]]] = {
    "vllm": _vllm,
    "sglang": _sglang,
    "lmdeploy-turbomind": _lmdeploy,
    "lmdeploy-pytorch": _lmdeploy,
    "trtllm": _trtllm,
    "llama_cpp_server": _llama_cpp_server,
}


def build_command(spec: LaunchSpec) -> EngineCommand:
    """The engine's launch command, ``engine_args`` appended last (they win on repeats)."""
    try:
        fn = LAUNCHERS[spec.engine]
    except KeyError:
        raise ConfigError(f"work_mode '{spec.engine}' does not start an engine server") from None
    argv = fn(spec) + extra_flags(spec.engine, spec.config) + list(spec.config.engine_args or [])
    env = {API_KEY_ENV[spec.engine]: spec.api_key} if spec.api_key and spec.engine in API_KEY_ENV else {}
    if spec.config.runtime_lora and spec.engine in RUNTIME_LORA_ENGINES:
        if spec.pooling:
            _refuse(spec.engine, "runtime_lora", "LoRA adapters are for generating models")
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # /v1/load_lora_adapter, /v1/unload_lora_adapter
    return EngineCommand(argv=argv, health_path=HEALTH_PATHS[spec.engine], env=env)
