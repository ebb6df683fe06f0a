"""Engine-server options beyond the common ones: gpt_server's keys (``enforce_eager``,
``kv_cache_quant_policy``, ``enable_chunked_prefill``, ``hf_overrides``), ``trust_remote_code``,
and the refusal of keys an engine has no flag for.

Every key here is either turned into the engine's own flag or refused with a ``ConfigError``
naming it: never accepted and dropped. ``check`` runs at config validation (``check-config``,
before ``serve`` starts anything); ``extra_flags`` when the launch command is built.
"""

from __future__ import annotations

import json
from typing import Any

from ...settings import ConfigError
from .options import EngineServerOptions

__all__ = ["extra_flags", "refused", "check"]

# llama.cpp-only keys: the GPU engines schedule and place layers themselves
_LLAMA_ONLY = ("n_batch", "n_gpu_layers", "n_threads", "repack")


def _flag(engine: str, key: str, value: Any) -> list[str] | None:
    """The flags for one key on one engine ([] = the engine's default already); None = no flag."""
    if engine == "vllm":
        match key:
            case "enforce_eager":
                return ["--enforce-eager"] if value else []
            case "enable_chunked_prefill":
                return ["--enable-chunked-prefill" if value else "--no-enable-chunked-prefill"]
            case "hf_overrides":
                return ["--hf-overrides", json.dumps(value)]
            case "trust_remote_code":
                return ["--trust-remote-code"] if value else []
            case "kv_cache_quant_policy":
                return {0: [], 8: ["--kv-cache-dtype", "fp8"]}.get(value)
            case "runtime_lora":  # VLLM_ALLOW_RUNTIME_LORA_UPDATING: commands.build_command
                return ["--enable-lora"] if value else []
            case "max_loras":
                return ["--max-loras", str(value)]
            case "max_lora_rank":
                return ["--max-lora-rank", str(value)]
    if engine == "sglang":
        match key:
            case "enforce_eager":
                return ["--disable-cuda-graph"] if value else []
            case "enable_chunked_prefill":
                return [] if value else ["--chunked-prefill-size", "-1"]
            case "hf_overrides":
                return ["--json-model-override-args", json.dumps(value)]
            case "trust_remote_code":
                return ["--trust-remote-code"] if value else []
            case "kv_cache_quant_policy":
                return {0: [], 8: ["--kv-cache-dtype", "fp8_e5m2"]}.get(value)
    if engine in ("lmdeploy-turbomind", "lmdeploy-pytorch"):
        match key:
            case "kv_cache_quant_policy":
                return ["--quant-policy", str(value)] if value else []
            case "enforce_eager" if engine == "lmdeploy-pytorch":
                return ["--eager-mode"] if value else []
            case "trust_remote_code":
                # LMDeploy's server has no switch: it always loads with trust_remote_code
                return [] if value else None
    if engine == "trtllm":
        match key:
            case "trust_remote_code":
                return ["--trust_remote_code"] if value else []
            case "kv_cache_quant_policy":
                return [] if value == 0 else None
    if engine == "llama_cpp_server":
        match key:
            case "trust_remote_code":  # GGUF files carry no code
                return [] if not value else None
            case "kv_cache_quant_policy":
                return [] if value == 0 else None
            case k if k in _LLAMA_ONLY:
                return []  # commands.py maps them
    return None


_HINTS = {
    "trust_remote_code": "this engine has no switch for it",
    "kv_cache_quant_policy": "vLLM and SGLang take 0 or 8 (fp8 KV cache), LMDeploy 0, 4 or 8",
    "runtime_lora": "loading LoRA adapters at run time is implemented for work_mode vllm; list adapters in lora instead",
    "max_loras": "a vLLM flag; pass this engine's own in engine_args",
    "max_lora_rank": "a vLLM flag; pass this engine's own in engine_args",
}
_KEYS = (
    "enforce_eager", "enable_chunked_prefill", "hf_overrides", "trust_remote_code", "kv_cache_quant_policy",
    "runtime_lora", "max_loras", "max_lora_rank", *_LLAMA_ONLY,
)


def _set_keys(c: EngineServerOptions) -> list[tuple[str, Any]]:
    out = []
    for key in _KEYS:
        value = getattr(c, key)
        if value is None or (key == "runtime_lora" and value is False):
            continue
        if key == "trust_remote_code" and value is False and "trust_remote_code" not in c.model_fields_set:
            continue
        out.append((key, value))
    return out


def refused(engine: str, c: EngineServerOptions) -> list[tuple[str, str]]:
    """(key, reason) for each set key this engine has no flag for."""
    return [
        (key, f"not supported by engine '{engine}' ({_HINTS.get(key, 'pass the engine flag in engine_args')})")
        for key, value in _set_keys(c)
        if _flag(engine, key, value) is None
    ]


def extra_flags(engine: str, c: EngineServerOptions) -> list[str]:
    """The flags of the keys above, after the common ones; a refused key is a ``ConfigError``."""
    bad = refused(engine, c)
    if bad:
        key, why = bad[0]
        raise ConfigError(f"model_config.{key}: {why}")
    argv: list[str] = []
    for key, value in _set_keys(c):
        argv += _flag(engine, key, value) or []
    return argv


def check(engine: str, c: EngineServerOptions) -> list[tuple[str, str]]:
    """Static refusals for config validation: the keys above, and those of the launch command
    that do not depend on the host (a dry run of it)."""
    from .commands import LaunchSpec, build_command

    out = refused(engine, c)
    if out:
        return out
    spec = LaunchSpec(
        engine=engine, model_path="model", served_name="model", port=1, config=c,
        chat_template_file="template.jinja" if c.chat_template else None,
    )
    try:
        build_command(spec)
    except ConfigError as exc:
        msg = str(exc)
        key, _, why = msg.partition(": ")
        return [(key.removeprefix("model_config."), why or msg)]
    return []
