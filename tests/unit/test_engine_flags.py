"""Engine options are mapped to the engine's own flag or refused by name at config check,
never accepted and dropped: gpt_server's keys (enforce_eager, enable_chunked_prefill,
kv_cache_quant_policy, hf_overrides), trust_remote_code, and llama.cpp-only keys on the GPU
engines. The launch commands are pure functions; SGLang and LMDeploy cannot run on this CPU, so
their flags are checked here (vLLM's run for real in tests/engines/test_vllm.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gpt_server.backends.relay.commands import LaunchSpec, build_command
from gpt_server.backends.relay.options import EngineServerOptions
from gpt_server.config import ConfigError, parse_config


def argv(engine: str, **cfg: Any) -> list[str]:
    opts = EngineServerOptions(model_name_or_path="/m", **cfg)
    return build_command(LaunchSpec(engine=engine, model_path="/m", served_name="m", port=1, config=opts)).argv


def check(work_mode: str, model_type: str = "auto", **cfg: Any) -> None:
    parse_config({"models": [{"m": {"model_config": {"model_name_or_path": "/m", **cfg}, "model_type": model_type, "work_mode": work_mode}}]})


OVERRIDES = {"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"]}


def test_vllm_maps_gpt_server_keys() -> None:
    a = argv("vllm", enforce_eager=True, enable_chunked_prefill=False, kv_cache_quant_policy=8, hf_overrides=OVERRIDES, trust_remote_code=True)
    assert "--enforce-eager" in a and "--no-enable-chunked-prefill" in a and "--trust-remote-code" in a
    assert a[a.index("--kv-cache-dtype") + 1] == "fp8"
    assert json.loads(a[a.index("--hf-overrides") + 1]) == OVERRIDES


def test_sglang_and_lmdeploy_map_them_to_their_own_flags() -> None:
    a = argv("sglang", enforce_eager=True, enable_chunked_prefill=False, hf_overrides=OVERRIDES, trust_remote_code=True)
    assert "--disable-cuda-graph" in a and "--trust-remote-code" in a
    assert a[a.index("--chunked-prefill-size") + 1] == "-1"
    assert json.loads(a[a.index("--json-model-override-args") + 1]) == OVERRIDES
    t = argv("lmdeploy-turbomind", kv_cache_quant_policy=4)
    assert t[t.index("--quant-policy") + 1] == "4"
    assert "--eager-mode" in argv("lmdeploy-pytorch", enforce_eager=True)


def test_trust_remote_code_defaults_off() -> None:
    for engine in ("vllm", "sglang", "trtllm"):
        assert not any("trust" in x for x in argv(engine)), engine
    # infinity trusts by default: the worker says no unless the entry says yes
    from gpt_server.backends.base import BackendSpec
    from gpt_server.backends.infinity.backend import InfinityBackend

    for trust, flag in ((False, "--no-trust-remote-code"), (True, "--trust-remote-code")):
        cfg = parse_config({"models": [{"m": {"model_config": {"model_name_or_path": "/m", "python": "/py", "trust_remote_code": trust},
                                              "model_type": "embedding", "work_mode": "infinity"}}]})
        assert flag in InfinityBackend(BackendSpec(entry=cfg.models[0], model_path="/m"))._command()


@pytest.mark.parametrize(
    ("work_mode", "cfg", "message"),
    [
        ("vllm", {"n_threads": 4}, "models[0].m.model_config.n_threads: not supported by engine 'vllm'"),
        ("sglang", {"n_gpu_layers": -1}, "models[0].m.model_config.n_gpu_layers: not supported by engine 'sglang'"),
        ("lmdeploy-turbomind", {"n_batch": 512}, "models[0].m.model_config.n_batch: not supported by engine 'lmdeploy-turbomind'"),
        ("lmdeploy-turbomind", {"enforce_eager": True}, "models[0].m.model_config.enforce_eager: not supported"),
        ("lmdeploy-turbomind", {"trust_remote_code": False}, "models[0].m.model_config.trust_remote_code: not supported"),
        ("vllm", {"repack": False}, "models[0].m.model_config.repack: not supported by engine 'vllm'"),
        ("vllm", {"kv_cache_quant_policy": 4}, "models[0].m.model_config.kv_cache_quant_policy: not supported"),
        ("lmdeploy-turbomind", {"lora": {"a": "/a"}}, "models[0].m.model_config.lora: not supported by engine 'lmdeploy-turbomind'"),
        ("llama_cpp_server", {"enable_prefix_caching": True}, "models[0].m.model_config.enable_prefix_caching: not supported"),
        ("llama_cpp_server", {"trust_remote_code": True}, "models[0].m.model_config.trust_remote_code: not supported"),
        ("llama_cpp", {"gpu_memory_utilization": 0.8}, "models[0].m.model_config.gpu_memory_utilization: unknown key for work_mode llama_cpp"),
        ("llama_cpp", {"engine_args": ["--x"]}, "models[0].m.model_config.engine_args: unknown key for work_mode llama_cpp"),
        ("hf", {"enable_prefix_caching": True}, "models[0].m.model_config.enable_prefix_caching: unknown key for work_mode hf"),
        ("hf", {"enforce_eager": True}, "models[0].m.model_config.enforce_eager: unknown key for work_mode hf"),
        ("llama_cpp", {"trust_remote_code": True}, "models[0].m.model_config.trust_remote_code: unknown key for work_mode llama_cpp"),
    ],
)
def test_unsupported_options_are_refused_at_config_check(work_mode: str, cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        check(work_mode, **cfg)
    assert message in str(exc.value), str(exc.value)


def test_an_entry_level_lora_joins_model_config_and_conflicts_are_named() -> None:
    body = {"model_config": {"model_name_or_path": "/m"}, "work_mode": "hf", "lora": {"sql": "/l"}}
    assert parse_config({"models": [{"m": body}]}).models[0].model_config_.lora == {"sql": "/l"}  # type: ignore[attr-defined]
    body["model_config"] = {"model_name_or_path": "/m", "lora": {"other": "/o"}}
    with pytest.raises(ConfigError, match="lora is set both on the entry and in model_config"):
        parse_config({"models": [{"m": body}]})
