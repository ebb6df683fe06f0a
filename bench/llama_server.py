"""llama.cpp's own C++ server (``llama-server``), built once from the llama.cpp sources
vendored in the installed ``llama-cpp-python`` sdist (the same ggml our engine links),
and cached — the peer the performance targets are measured against.

    python -m bench.llama_server            # build (or find) it and print its path

The build needs cmake and a C++ compiler (about 10 minutes on 2 cores); it runs at low
priority. Cache: ``$GPT_SERVER_BENCH_CACHE`` or ``~/.cache/gpt-server-bench``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

__all__ = ["llama_server_binary", "build"]

CACHE = Path(os.environ.get("GPT_SERVER_BENCH_CACHE", Path.home() / ".cache" / "gpt-server-bench"))


def _target() -> Path:
    return CACHE / f"llama-server-{version('llama-cpp-python')}" / "llama-server"


def llama_server_binary() -> Path | None:
    """The cached binary, or None when it has not been built yet."""
    path = _target()
    return path if path.exists() else None


def build(jobs: int = 2) -> Path:
    """Download the llama-cpp-python sdist of the installed version, build ``llama-server``."""
    found = llama_server_binary()
    if found is not None:
        return found
    ver = version("llama-cpp-python")
    out = _target()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="llama-server-", dir=out.parent))
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(work), f"llama-cpp-python=={ver}"],
            check=True,
        )
        sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
        src = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        nice = ["nice", "-n", "19"] if shutil.which("nice") else []
        build_dir = src / "build"
        subprocess.run(
            [*nice, "cmake", "-B", str(build_dir), "-S", str(src), "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_CURL=OFF",
             "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DCMAKE_BUILD_TYPE=Release",
             "-DBUILD_SHARED_LIBS=OFF"],
            check=True,
        )
        subprocess.run([*nice, "cmake", "--build", str(build_dir), "--target", "llama-server", "-j", str(jobs)], check=True)
        binary = next(build_dir.rglob("llama-server"))
        tmp = out.with_suffix(".tmp")
        shutil.copy2(binary, tmp)
        tmp.rename(out)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(build())
