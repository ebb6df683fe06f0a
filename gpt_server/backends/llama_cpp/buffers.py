"""Whether llama.cpp may keep weights in its extra CPU buffer types (repacked layouts, AMX).

llama.cpp moves weights it can into "extra" buffer types at load: repacked layouts for
AVX2/AVX-512 and, on CPUs with Intel AMX, tiles for its AMX kernels. On AMX hosts that AMX
path crashes the process (SIGSEGV in ``ggml_backend_amx_mul_mat``) on some machines, virtual
ones above all (ggml-org/llama.cpp#20824; ollama/ollama#17205, #17249): here, a 2-vCPU
Sapphire Rapids VM, every decode of more than one token (any prompt) crashed with the
SmolLM2 Q4_1 GGUF. Load-time flags cannot tell a host where it works from one where it
does not, so the default on a CPU that advertises AMX is off (the weights stay in plain CPU
buffers, as llama.cpp's ``--no-repack``), and on everywhere else; ``repack: true`` in a
model's config asks for them anyway.

The same rule applies to llama-cpp-python's own server (``work_mode: llama_cpp_server``),
which has no switch for it: ``server_argv`` starts it through a few lines that clear the
flag in the model parameters it asks llama.cpp for.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

__all__ = ["cpu_has_amx", "use_extra_buffers", "server_argv", "default_model_params"]

log = logging.getLogger(__name__)

_AMX_FLAGS = frozenset({"amx_tile", "amx_int8", "amx_bf16"})

# ``python -c`` of llama-cpp-python's server, its model parameters without extra buffers;
# runs in the engine's interpreter, which need not have gpt_server installed
_SERVER_BOOT = (
    "import runpy, llama_cpp.llama_cpp as L\n"
    "_defaults = L.llama_model_default_params\n"
    "def _plain():\n"
    "    p = _defaults()\n"
    "    p.use_extra_bufts = False\n"
    "    return p\n"
    "L.llama_model_default_params = _plain\n"
    "runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)\n"
)


def cpu_has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """The CPU advertises AMX tiles (Linux's flags; False where there is no such file)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return not _AMX_FLAGS.isdisjoint(line.split(":", 1)[-1].split())
    except OSError:
        return False
    return False


@functools.cache
def _amx_default() -> bool:
    if cpu_has_amx():
        log.warning(
            "this CPU has AMX: llama.cpp's AMX weight buffers crash on some AMX hosts (llama.cpp#20824), "
            "so weights stay in plain CPU buffers; set model_config.repack: true to use them"
        )
        return False
    return True


def use_extra_buffers(repack: bool | None) -> bool:
    """The configured ``repack``, or by default: on unless the CPU has AMX."""
    return _amx_default() if repack is None else repack


def server_argv(python: str, repack: bool | None) -> list[str]:
    """The start of the command of llama-cpp-python's server (its arguments follow)."""
    if use_extra_buffers(repack):
        return [python, "-m", "llama_cpp.server"]
    return [python, "-c", _SERVER_BOOT]


@contextlib.contextmanager
def default_model_params(repack: bool | None = None) -> Iterator[None]:
    """Within it, ``llama_cpp.Llama(...)`` (which takes no such argument) loads its model
    with or without extra buffers by the rule above."""
    import llama_cpp.llama_cpp as L

    if use_extra_buffers(repack):
        yield
        return
    defaults = L.llama_model_default_params

    def plain() -> L.llama_model_params:
        p = defaults()
        p.use_extra_bufts = False
        return p

    L.llama_model_default_params = plain
    try:
        yield
    finally:
        L.llama_model_default_params = defaults
