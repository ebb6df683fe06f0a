"""llama.cpp's extra weight buffers: off by default on AMX CPUs (whose AMX path crashed every
multi-token decode on this project's CI host), for our engine and for llama-cpp-python's server."""

from __future__ import annotations

import runpy
from pathlib import Path

import llama_cpp.llama_cpp as L
import pytest

from gpt_server.backends.llama_cpp import LlamaCppOptions, buffers


def _cpuinfo(tmp_path: Path, flags: str) -> str:
    p = tmp_path / "cpuinfo"
    p.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    return str(p)


def test_amx_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    assert buffers.cpu_has_amx(_cpuinfo(tmp_path, "avx2 avx512f amx_bf16 amx_tile amx_int8"))
    assert not buffers.cpu_has_amx(_cpuinfo(tmp_path, "avx2 avx512f avx512_vnni"))
    assert not buffers.cpu_has_amx(str(tmp_path / "missing"))


def test_the_setting_wins_over_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    buffers._amx_default.cache_clear()
    monkeypatch.setattr(buffers, "cpu_has_amx", lambda: True)
    try:
        assert buffers.use_extra_buffers(None) is False
        assert buffers.use_extra_buffers(True) is True
        monkeypatch.setattr(buffers, "cpu_has_amx", lambda: False)
        buffers._amx_default.cache_clear()
        assert buffers.use_extra_buffers(None) is True
        assert buffers.use_extra_buffers(False) is False
    finally:
        buffers._amx_default.cache_clear()
    assert LlamaCppOptions.model_validate({"model_name_or_path": "m.gguf", "repack": True}).repack is True


def test_llama_defaults_are_plain_inside_the_context_and_restored_after() -> None:
    assert L.llama_model_default_params().use_extra_bufts is True  # llama.cpp's own default
    with buffers.default_model_params(False):
        assert L.llama_model_default_params().use_extra_bufts is False
    assert L.llama_model_default_params().use_extra_bufts is True
    with buffers.default_model_params(True):
        assert L.llama_model_default_params().use_extra_bufts is True


def test_the_server_boot_clears_the_flag_before_the_server_module_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, bool]] = []
    monkeypatch.setattr(L, "llama_model_default_params", L.llama_model_default_params)  # restored after
    monkeypatch.setattr(runpy, "run_module", lambda name, **kw: seen.append((name, L.llama_model_default_params().use_extra_bufts)))
    argv = buffers.server_argv("python", False)
    assert argv[:2] == ["python", "-c"]
    exec(argv[2], {"__name__": "__main__"})
    assert seen == [("llama_cpp.server", False)]
    assert buffers.server_argv("python", True) == ["python", "-m", "llama_cpp.server"]
