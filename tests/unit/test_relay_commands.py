"""Launch commands built for each engine server from a model entry."""

from __future__ import annotations

import json

import pytest

from gpt_server.backends.relay.commands import LAUNCHERS, LaunchSpec, build_command
from gpt_server.backends.relay.options import EngineServerOptions
from gpt_server.backends.relay.translate import (
    CallsFromJson,
    enforces_by_schema,
    upstream_body,
    upstream_error,
)
from gpt_server.config import ConfigError, parse_config
from gpt_server.errors import BadRequestError, RateLimitError, UpstreamError
from gpt_server.protocol.worker import (
    DeltaEvent,
    FinishEvent,
    GenerateRequest,
    SamplingParams,
    StructuredSpec,
    ToolSpec,
)

FULL = dict(
    model_name_or_path="/models/qwen",
    python="/venvs/eng/bin/python",
    max_model_len=8192,
    gpu_memory_utilization=0.85,
    dtype="bfloat16",
    enable_prefix_caching=True,
    lora={"sql": "/loras/sql", "chat": "/loras/chat"},
    tool_call_parser="hermes",
    reasoning_parser="deepseek_r1",
    engine_args=["--seed", "7"],
)


def spec(engine: str, gpus: list[int] | None = None, **cfg: object) -> LaunchSpec:
    return LaunchSpec(
        engine=engine,
        model_path="/models/qwen",
        served_name="qwen",
        port=41000,
        config=EngineServerOptions(**cfg),  # type: ignore[arg-type]
        gpus=gpus if gpus is not None else [2, 3],
        api_key="k",
    )


def pairs(argv: list[str]) -> dict[str, str]:
    return {a: b for a, b in zip(argv, argv[1:], strict=False) if a.startswith("-")}


def test_vllm_full() -> None:
    cmd = build_command(spec("vllm", **FULL))
    argv = cmd.argv
    assert argv[:3] == ["/venvs/eng/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    p = pairs(argv)
    assert p["--model"] == "/models/qwen" and p["--served-model-name"] == "qwen"
    assert p["--host"] == "127.0.0.1" and p["--port"] == "41000"
    assert p["--tensor-parallel-size"] == "2"
    assert p["--max-model-len"] == "8192" and p["--gpu-memory-utilization"] == "0.85"
    assert p["--dtype"] == "bfloat16" and "--enable-prefix-caching" in argv
    i = argv.index("--lora-modules")
    assert "--enable-lora" in argv and argv[i + 1 : i + 3] == ["sql=/loras/sql", "chat=/loras/chat"]
    assert "--enable-auto-tool-choice" in argv and p["--tool-call-parser"] == "hermes"
    assert p["--reasoning-parser"] == "deepseek_r1"
    assert "--api-key" not in argv and cmd.env == {"VLLM_API_KEY": "k"}  # not in ps
    assert argv[-2:] == ["--seed", "7"]  # engine_args last
    assert cmd.health_path == "/health"


def test_vllm_minimal_single_gpu_and_prefix_cache_off() -> None:
    argv = build_command(spec("vllm", gpus=[], model_name_or_path="m", enable_prefix_caching=False)).argv
    p = pairs(argv)
    assert p["--tensor-parallel-size"] == "1"
    assert "--no-enable-prefix-caching" in argv
    for flag in ("--max-model-len", "--dtype", "--enable-lora", "--tool-call-parser", "--reasoning-parser"):
        assert flag not in argv


def test_sglang_full() -> None:
    argv = build_command(spec("sglang", **FULL)).argv
    assert argv[1:3] == ["-m", "sglang.launch_server"]
    p = pairs(argv)
    assert p["--model-path"] == "/models/qwen" and p["--served-model-name"] == "qwen"
    assert p["--tp-size"] == "2" and p["--context-length"] == "8192"
    assert p["--mem-fraction-static"] == "0.85" and p["--dtype"] == "bfloat16"
    assert "--disable-radix-cache" not in argv
    assert "--enable-lora" in argv and "sql=/loras/sql" in argv
    assert p["--tool-call-parser"] == "hermes" and p["--reasoning-parser"] == "deepseek_r1"
    off = build_command(spec("sglang", model_name_or_path="m", enable_prefix_caching=False)).argv
    assert "--disable-radix-cache" in off


@pytest.mark.parametrize("engine,backend", [("lmdeploy-turbomind", "turbomind"), ("lmdeploy-pytorch", "pytorch")])
def test_lmdeploy(engine: str, backend: str) -> None:
    cfg = {k: v for k, v in FULL.items() if k != "lora"}
    argv = build_command(spec(engine, **cfg)).argv
    assert argv[0] == "/venvs/eng/bin/lmdeploy" and argv[1:4] == ["serve", "api_server", "/models/qwen"]
    p = pairs(argv)
    assert p["--backend"] == backend and p["--tp"] == "2" and p["--model-name"] == "qwen"
    assert p["--server-name"] == "127.0.0.1" and p["--server-port"] == "41000"
    assert p["--session-len"] == "8192" and p["--cache-max-entry-count"] == "0.85"
    assert "--enable-prefix-caching" in argv and p["--api-keys"] == "k"
    assert p["--tool-call-parser"] == "hermes" and p["--reasoning-parser"] == "deepseek_r1"


def test_lmdeploy_lora_needs_pytorch_backend() -> None:
    argv = build_command(spec("lmdeploy-pytorch", **FULL)).argv
    assert "--adapters" in argv and "chat=/loras/chat" in argv
    with pytest.raises(ConfigError, match="lora"):
        build_command(spec("lmdeploy-turbomind", **FULL))


def test_trtllm() -> None:
    argv = build_command(
        spec("trtllm", model_name_or_path="m", python="/venvs/trt/bin/python", max_model_len=4096,
             gpu_memory_utilization=0.9, reasoning_parser="deepseek-r1")
    ).argv
    assert argv[:2] == ["/venvs/trt/bin/trtllm-serve", "/models/qwen"]
    p = pairs(argv)
    assert p["--tp_size"] == "2" and p["--max_seq_len"] == "4096"
    assert p["--kv_cache_free_gpu_memory_fraction"] == "0.9" and p["--served_model_name"] == "qwen"
    with pytest.raises(ConfigError, match="dtype"):
        build_command(spec("trtllm", **FULL))


def test_llama_cpp_server() -> None:
    cmd = build_command(spec("llama_cpp_server", gpus=[], model_name_or_path="m", n_ctx=1024, n_threads=2, repack=True))
    assert cmd.argv[1:3] == ["-m", "llama_cpp.server"] and cmd.health_path == "/v1/models"
    plain = build_command(spec("llama_cpp_server", gpus=[], model_name_or_path="m", repack=False)).argv
    assert plain[1] == "-c" and "use_extra_bufts = False" in plain[2] and plain[3] == "--model"
    p = pairs(cmd.argv)
    assert p["--model_alias"] == "qwen" and p["--n_ctx"] == "1024" and p["--n_threads"] == "2"
    assert "--n_gpu_layers" not in p
    on_gpu = pairs(build_command(spec("llama_cpp_server", gpus=[0], model_name_or_path="m")).argv)
    assert on_gpu["--n_gpu_layers"] == "-1"
    with pytest.raises(ConfigError, match="tool_call_parser"):
        build_command(spec("llama_cpp_server", model_name_or_path="m", tool_call_parser="hermes"))


def test_every_engine_has_a_command_and_health_path() -> None:
    for engine in LAUNCHERS:
        cmd = build_command(spec(engine, model_name_or_path="m"))
        assert cmd.argv and cmd.health_path.startswith("/")
    with pytest.raises(ConfigError):
        build_command(spec("openai", model_name_or_path="m"))


def test_config_accepts_engine_fields_and_bounds() -> None:
    data = {"models": [{"m": {"work_mode": "vllm", "model_config": {"model_name_or_path": "/x", "startup_timeout": 30,
                                                                     "engine_port": 40000, "upstream_timeout": 5}}}]}
    cfg = parse_config(data)
    assert cfg.models[0].model_config_.startup_timeout == 30
    data["models"][0]["m"]["model_config"]["engine_port"] = 70000
    with pytest.raises(ConfigError, match="engine_port"):
        parse_config(data)


def _req(**kw: object) -> GenerateRequest:
    base = dict(request_id="r", model="m", kind="chat", messages=[{"role": "user", "content": "hi"}])
    return GenerateRequest(**{**base, **kw})  # type: ignore[arg-type]


def test_upstream_body_chat() -> None:
    req = _req(
        params=SamplingParams(max_tokens=5, temperature=0, top_k=5, stop=["x"], n=2, logprobs=True, top_logprobs=3),
        tools=ToolSpec(tools=[{"type": "function", "function": {"name": "f"}}], choice="named", name="f"),
        structured=None,
    )
    path, body = upstream_body(req, "up-model")
    assert path == "/chat/completions"
    assert body["model"] == "up-model" and body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 5 and body["top_k"] == 5 and body["n"] == 2 and body["stop"] == ["x"]
    assert body["logprobs"] is True and body["top_logprobs"] == 3
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert "min_p" not in body and "repetition_penalty" not in body  # defaults are not sent


def test_upstream_body_completion_and_structured() -> None:
    req = GenerateRequest(request_id="r", model="m", kind="completion", prompts=["a", [1, 2]],
                          params=SamplingParams(logprobs=True, top_logprobs=2, echo=True))
    path, body = upstream_body(req, "u")
    assert path == "/completions" and body["prompt"] == ["a", [1, 2]] and body["logprobs"] == 2 and body["echo"]
    js = _req(structured=StructuredSpec(type="json_schema", json_schema={"type": "object"}))
    assert upstream_body(js, "u")[1]["response_format"]["json_schema"]["schema"] == {"type": "object"}
    with pytest.raises(BadRequestError):
        upstream_body(_req(structured=StructuredSpec(type="regex", pattern="a+")), "u")


def test_upstream_error_mapping() -> None:
    e400 = upstream_error(400, {"error": {"message": "too long", "param": "messages", "code": "context_length_exceeded"}})
    assert isinstance(e400, BadRequestError) and e400.param == "messages" and e400.message == "too long"
    vllm_style = upstream_error(400, {"object": "error", "message": "bad", "type": "BadRequestError", "code": 400})
    assert vllm_style.status == 400 and vllm_style.message == "bad"
    e404 = upstream_error(404, {"error": {"message": "The model `x` does not exist."}})
    assert isinstance(e404, UpstreamError) and e404.status == 502 and e404.code == "upstream_model_not_found"
    e429 = upstream_error(429, {"detail": "slow down"}, retry_after="7")
    assert isinstance(e429, RateLimitError) and e429.headers["Retry-After"] == "7"
    assert upstream_error(503, None).status == 502
    assert upstream_error(401, {}).status == 502


@pytest.mark.parametrize(
    ("flavor", "spec_", "want"),
    [
        ("vllm", StructuredSpec(type="regex", pattern="a+"), {"structured_outputs": {"regex": "a+"}}),
        ("vllm", StructuredSpec(type="choice", choices=["x", "y"]), {"structured_outputs": {"choice": ["x", "y"]}}),
        ("vllm", StructuredSpec(type="grammar", grammar="root ::= \"a\""), {"structured_outputs": {"grammar": "root ::= \"a\""}}),
        ("vllm_guided", StructuredSpec(type="choice", choices=["x"]), {"guided_choice": ["x"]}),
        ("gpt_server", StructuredSpec(type="regex", pattern="b"), {"guided_regex": "b"}),
        ("sglang", StructuredSpec(type="regex", pattern="a+"), {"regex": "a+"}),
        ("sglang", StructuredSpec(type="choice", choices=["a.b", "c"]), {"regex": r"(a\.b|c)"}),
        ("sglang", StructuredSpec(type="grammar", grammar="root ::= \"a\""), {"ebnf": "root ::= \"a\""}),
        ("lmdeploy", StructuredSpec(type="regex", pattern="a+"),
         {"response_format": {"type": "regex_schema", "regex_schema": "a+"}}),
        ("llama_cpp", StructuredSpec(type="choice", choices=["yes", 'say "no"']),
         {"grammar": 'root ::= "yes" | "say \\"no\\""'}),
        ("llama_cpp", StructuredSpec(type="grammar", grammar="root ::= \"a\""), {"grammar": "root ::= \"a\""}),
    ],
)
def test_guided_output_in_each_engines_own_parameters(flavor: str, spec_: StructuredSpec, want: dict) -> None:
    body = upstream_body(_req(structured=spec_), "u", flavor)[1]
    assert {k: body[k] for k in want} == want
    if "response_format" not in want:
        assert "response_format" not in body


@pytest.mark.parametrize(
    ("flavor", "spec_", "param"),
    [
        ("openai", StructuredSpec(type="regex", pattern="a"), "guided_regex"),
        ("openai", StructuredSpec(type="choice", choices=["a"]), "guided_choice"),
        ("trtllm", StructuredSpec(type="grammar", grammar="root ::= \"a\""), "guided_grammar"),
        ("lmdeploy", StructuredSpec(type="grammar", grammar="root ::= \"a\""), "guided_grammar"),
        ("llama_cpp", StructuredSpec(type="regex", pattern="a"), "guided_regex"),
        ("tei", StructuredSpec(type="regex", pattern="a"), "guided_regex"),
    ],
)
def test_guided_output_an_engine_cannot_honour_is_400(flavor: str, spec_: StructuredSpec, param: str) -> None:
    with pytest.raises(BadRequestError) as ei:
        upstream_body(_req(structured=spec_), "u", flavor)
    assert ei.value.param == param and ei.value.code == "unsupported_parameter" and flavor in ei.value.message


def test_enforced_tool_choice_natively_or_by_a_schema_of_the_calls() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "g", "parameters": {"type": "object"}}}]
    required = _req(tools=ToolSpec(tools=tools, choice="required", parallel=False))
    for flavor in ("openai", "gpt_server"):
        body = upstream_body(required, "u", flavor)[1]
        assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
        assert not enforces_by_schema(required, flavor)
    vllm = upstream_body(required, "u", "vllm")[1]
    assert vllm["tool_choice"] == "none" and vllm["tools"] == tools and enforces_by_schema(required, "vllm")
    schema = vllm["structured_outputs"]["json"]
    assert schema["maxItems"] == 1 and schema["minItems"] == 1 and len(schema["items"]["anyOf"]) == 2
    named = _req(tools=ToolSpec(tools=tools, choice="named", name="g"))
    items = upstream_body(named, "u", "sglang")[1]["response_format"]["json_schema"]["schema"]["items"]
    assert items["properties"]["name"] == {"const": "g"}
    assert upstream_body(named, "u", "llama_cpp")[1]["response_format"]["type"] == "json_object"
    with pytest.raises(BadRequestError) as ei:
        upstream_body(required, "u", "trtllm")
    assert ei.value.param == "tool_choice"
    auto = _req(tools=ToolSpec(tools=tools, choice="auto"))
    assert upstream_body(auto, "u", "llama_cpp")[1]["tool_choice"] == "auto" and not enforces_by_schema(auto, "vllm")
    both = _req(tools=ToolSpec(tools=tools, choice="required"), structured=StructuredSpec(type="regex", pattern="a"))
    with pytest.raises(BadRequestError):
        upstream_body(both, "u", "vllm")


def test_calls_from_json_become_tool_calls() -> None:
    conv = CallsFromJson()
    out = [*conv.feed(DeltaEvent(index=0, text='[{"name": "f", "argu')),
           *conv.feed(DeltaEvent(index=0, text='ments": {"x": 1}}]')), *conv.feed(FinishEvent(index=0, finish_reason="stop"))]
    (delta, finish) = out
    assert isinstance(delta, DeltaEvent) and delta.text == "" and delta.tool_calls is not None
    assert [(c.name, json.loads(c.arguments)) for c in delta.tool_calls] == [("f", {"x": 1})]
    assert isinstance(finish, FinishEvent) and finish.finish_reason == "tool_calls"
    cut = [*conv.feed(DeltaEvent(index=1, text='[{"na')), *conv.feed(FinishEvent(index=1, finish_reason="length"))]
    assert [type(e).__name__ for e in cut] == ["DeltaEvent", "FinishEvent"] and cut[0].text == '[{"na'  # type: ignore[union-attr]
    assert cut[1].finish_reason == "length"  # type: ignore[union-attr]


def test_pooling_runners_and_rerank_commands() -> None:
    def cmd(engine: str, **kw: object) -> list[str]:
        s = spec(engine, model_name_or_path="/m")
        return build_command(LaunchSpec(**{**s.__dict__, **kw})).argv  # type: ignore[arg-type]

    assert pairs(cmd("vllm", rerank=True))["--runner"] == "pooling"
    assert pairs(cmd("vllm", embedding=True))["--runner"] == "pooling"
    assert "--is-embedding" in cmd("sglang", rerank=True)
    for engine in ("lmdeploy-pytorch", "lmdeploy-turbomind", "trtllm", "llama_cpp_server"):
        with pytest.raises(ConfigError, match="rerank"):
            cmd(engine, rerank=True)
    with pytest.raises(ConfigError, match="lora"):
        build_command(LaunchSpec(**{**spec("vllm", model_name_or_path="/m", lora={"a": "/a"}).__dict__, "embedding": True}))


def test_runtime_lora_flags_env_and_refusals() -> None:
    """runtime_lora: vLLM gets --enable-lora, its runtime-update switch in the environment and
    --max-loras/--max-lora-rank; any other engine refuses the keys at config validation."""
    from gpt_server.backends.relay.engine_flags import check

    cmd = build_command(spec("vllm", model_name_or_path="/m", runtime_lora=True, max_loras=3, max_lora_rank=32))
    assert "--enable-lora" in cmd.argv and pairs(cmd.argv)["--max-loras"] == "3" and pairs(cmd.argv)["--max-lora-rank"] == "32"
    assert cmd.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    off = build_command(spec("vllm", model_name_or_path="/m", runtime_lora=False))
    assert "--enable-lora" not in off.argv and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in off.env
    with pytest.raises(ConfigError, match="runtime_lora"):
        build_command(LaunchSpec(**{**spec("vllm", model_name_or_path="/m", runtime_lora=True).__dict__, "embedding": True}))
    for engine in ("sglang", "lmdeploy-pytorch", "trtllm", "llama_cpp_server"):
        refused = dict(check(engine, EngineServerOptions(model_name_or_path="/m", runtime_lora=True, max_loras=2)))
        assert "runtime_lora" in refused and "vllm" in refused["runtime_lora"], (engine, refused)
        assert check(engine, EngineServerOptions(model_name_or_path="/m", runtime_lora=False)) == []
    with pytest.raises(ValueError, match="max_loras"):
        EngineServerOptions(model_name_or_path="/m", max_loras=0)
