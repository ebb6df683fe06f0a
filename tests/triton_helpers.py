"""A real Triton Inference Server for the tests: the ``tritonserver`` binary of the
``nvidia-pytriton`` wheel, on a hand-written model repository (tests/data/triton_ensemble).

The wheel is unpacked once into ``<test cache>/triton-<version>`` (``pip download --no-deps``:
its own requirements, numpy<2 among them, never touch our venv). Its Python-backend stub is
linked against an old pybind11 that reads numpy<2's ABI, so the stub runs in a small venv of
its own with numpy 1.26 ahead of our site-packages (llama-cpp-python comes from ours); the stub
finds that venv through PATH. PyTriton's own ``Triton().bind()`` is not used: its proxy model's
multiprocessing resource tracker fails under this Python build.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

from bench.servers import Proc
from gpt_server.backends.llama_cpp.buffers import use_extra_buffers
from gpt_server.procs import free_port
from tests.relay_helpers import _run, cache_root

__all__ = ["PYTRITON_VERSION", "STUB_NUMPY", "build_tritonserver", "TritonServer", "ensemble_config"]

PYTRITON_VERSION = "0.7.0"
STUB_NUMPY = "1.26.4"
MODEL_PY = Path(__file__).parent / "data" / "triton_ensemble" / "model.py"

_INPUTS = [  # TensorRT-LLM's ensemble inputs (those the test model reads), all but two optional
    ("text_input", "TYPE_STRING", "[ 1 ]", False), ("max_tokens", "TYPE_INT32", "[ 1 ]", False),
    ("stream", "TYPE_BOOL", "[ 1 ]", True), ("temperature", "TYPE_FP32", "[ 1 ]", True),
    ("top_k", "TYPE_INT32", "[ 1 ]", True), ("top_p", "TYPE_FP32", "[ 1 ]", True),
    ("repetition_penalty", "TYPE_FP32", "[ 1 ]", True), ("presence_penalty", "TYPE_FP32", "[ 1 ]", True),
    ("frequency_penalty", "TYPE_FP32", "[ 1 ]", True), ("beam_width", "TYPE_INT32", "[ 1 ]", True),
    ("end_id", "TYPE_INT32", "[ 1 ]", True), ("pad_id", "TYPE_INT32", "[ 1 ]", True),
    ("random_seed", "TYPE_UINT64", "[ 1 ]", True), ("return_log_probs", "TYPE_BOOL", "[ 1 ]", True),
    ("stop_words", "TYPE_STRING", "[ -1 ]", True), ("bad_words", "TYPE_STRING", "[ -1 ]", True),
]
_OUTPUTS = [("text_output", "TYPE_STRING", "[ -1 ]"), ("cum_log_probs", "TYPE_FP32", "[ -1 ]"),
            ("output_log_probs", "TYPE_FP32", "[ -1, -1 ]")]


def build_tritonserver(root: Path | None = None) -> Path:
    """The unpacked wheel's ``tritonserver`` directory, made once (returns ``<dir>``)."""
    base = (root or cache_root()) / f"triton-{PYTRITON_VERSION}"
    marker = base / ".gpt-server-ready"
    version = f"{PYTRITON_VERSION} {STUB_NUMPY} {sys.version_info.major}.{sys.version_info.minor}"
    if marker.is_file() and marker.read_text().strip() == version:
        _link_site(base)
        return base
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    log = base.parent / "triton-build.log"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "download", "--no-deps", "-d", str(base / "wheel"), f"nvidia-pytriton=={PYTRITON_VERSION}"], log)
    (wheel,) = (base / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(base / "unpacked")
    shutil.rmtree(base / "wheel")
    server = base / "unpacked" / "pytriton" / "tritonserver"
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy(server / "python_backend_stubs" / minor / "triton_python_backend_stub", server / "backends" / "python")
    for p in [server / "bin" / "tritonserver", server / "backends" / "python" / "triton_python_backend_stub"]:
        p.chmod(0o755)
    _run([sys.executable, "-m", "venv", "--without-pip", str(base / "stubenv")], log)
    _run([*pip, "install", "--no-deps", "--target", str(_stub_site(base)), f"numpy=={STUB_NUMPY}"], log)
    _link_site(base)
    marker.write_text(version)
    return base


def _stub_site(base: Path) -> Path:
    return base / "stubenv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _link_site(base: Path) -> None:
    """Point the stub venv at this run's site-packages (llama-cpp-python). Written on every call:
    the unpacked server is cached across checkouts, and a path left by an earlier checkout's venv
    (since removed) would leave the stub without llama_cpp."""
    pth = _stub_site(base) / "zz_gpt_server_test.pth"
    line = sysconfig.get_paths()["purelib"] + "\n"
    if not pth.is_file() or pth.read_text() != line:
        pth.write_text(line)


def ensemble_config(name: str, gguf: str, events_log: Path) -> str:
    """config.pbtxt of the test model: decoupled Python backend, the ensemble's tensors."""
    ins = ",\n".join(
        f'  {{ name: "{n}" data_type: {t} dims: {d}{" optional: true" if opt else ""} }}' for n, t, d, opt in _INPUTS
    )
    outs = ",\n".join(f'  {{ name: "{n}" data_type: {t} dims: {d} }}' for n, t, d in _OUTPUTS)
    params = {
        "gguf": gguf, "events_log": str(events_log), "n_ctx": "2048", "n_threads": "1",
        "extra_buffers": "1" if use_extra_buffers(None) else "0",  # as our engine (off on AMX CPUs)
    }
    ps = "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}' for k, v in params.items())
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 8\nmodel_transaction_policy {{ decoupled: true }}\n'
        f"input [\n{ins}\n]\noutput [\n{outs}\n]\ninstance_group [ {{ count: 1 kind: KIND_CPU }} ]\n{ps}\n"
    )


class TritonServer:
    """tritonserver on a loopback HTTP port (gRPC and metrics off), serving ``ensemble``."""

    def __init__(self, tmp: Path, gguf: str, model: str = "ensemble") -> None:
        self.base = build_tritonserver()
        self.tmp = tmp
        self.model = model
        self.port = free_port()
        self.events_log = tmp / "triton-events.jsonl"
        repo = tmp / "triton-repo"
        (repo / model / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(MODEL_PY, repo / model / "1" / "model.py")
        (repo / model / "config.pbtxt").write_text(ensemble_config(model, gguf, self.events_log))
        self.repo = repo
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> TritonServer:
        """Start tritonserver and wait until the model is ready. A start whose model fails to load
        is tried once more (the Python stub's start has failed once in CI with nothing else
        wrong); the first failure's reasons are kept in the log, and a second failure raises."""
        try:
            return self._start(timeout)
        except RuntimeError as exc:
            if self.proc is None or self.proc.alive() or "failed to load" not in str(exc):
                raise
            self.proc.stop()
            print(f"tritonserver: model load failed, starting once more:\n{exc}", file=sys.stderr)
            return self._start(timeout)

    def _start(self, timeout: float) -> TritonServer:
        server = self.base / "unpacked" / "pytriton" / "tritonserver"
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env = {
            "LD_LIBRARY_PATH": os.pathsep.join(
                [str(self.base / "unpacked" / "nvidia_pytriton.libs"), libdir, os.environ.get("LD_LIBRARY_PATH", "")]
            ),
            "PATH": os.pathsep.join([str(self.base / "stubenv" / "bin"), os.environ.get("PATH", "")]),
        }
        args = [
            str(server / "bin" / "tritonserver"), f"--model-repository={self.repo}",
            f"--backend-directory={server / 'backends'}", f"--http-port={self.port}", "--http-address=127.0.0.1",
            "--allow-grpc=false", "--allow-metrics=false", "--exit-timeout-secs=5",
            # the Python backend's shared-memory regions get names of this server's own (the default
            # prefix is the same for every tritonserver on the host, and a region left by a killed one
            # would be reused); a small first region, and a stub start that may be slow on a busy host
            f"--backend-config=python,shm-region-prefix-name=gpt_server_test_{os.getpid()}_{self.port}_",
            "--backend-config=python,shm-default-byte-size=4194304",
            "--backend-config=python,stub-timeout-seconds=120",
        ]
        self.proc = Proc(args, self.tmp / "tritonserver.log", env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"tritonserver exited ({self.proc.popen.returncode}):\n{self.failure()}")
            try:
                if httpx.get(f"{self.url}/v2/models/{self.model}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"tritonserver not ready in {timeout}s:\n{self.failure()}")

    def failure(self) -> str:
        """Why this start failed: the log's error lines and the model's status row (which the
        end of the log, all tables and shutdown lines, does not show), then that end."""
        assert self.proc is not None
        lines = self.proc.new_log().splitlines()
        why = [ln for ln in lines if ln.startswith("E") or any(w in ln for w in ("UNAVAILABLE", "failed to load", "Error"))]
        return "\n".join([*why[-40:], "--- end of the log ---", *lines[-15:]])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=15)
            self.proc = None

    def events(self) -> list[dict[str, Any]]:
        """What the model logged: one start and one done/cancelled per request."""
        if not self.events_log.exists():
            return []
        return [json.loads(line) for line in self.events_log.read_text().splitlines() if line.strip()]
