"""Before a worker of an engine server starts: the engine's interpreter exists and can import
the engine. A missing virtualenv is a configuration error (``serve`` stops with exit code 2),
not a crash to restart forever."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from typing import TYPE_CHECKING

from ...settings import ConfigError
from .commands import engine_python
from .options import EngineServerOptions

if TYPE_CHECKING:
    from ...config import ModelEntry

__all__ = ["ENGINE_MODULES", "check_host"]

# the module each engine's server runs from (what its interpreter must be able to import)
ENGINE_MODULES: dict[str, str] = {
    "vllm": "vllm",
    "sglang": "sglang",
    "lmdeploy-turbomind": "lmdeploy",
    "lmdeploy-pytorch": "lmdeploy",
    "trtllm": "tensorrt_llm",
    "llama_cpp_server": "llama_cpp",
}

_FIND = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 3)"


def check_host(engine: str, entry: ModelEntry) -> None:
    c = entry.model_config_
    if not isinstance(c, EngineServerOptions):
        return
    key = f"models.{entry.name}.model_config.python"
    python = engine_python(c)
    if c.python and not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ConfigError(f"{key}: '{python}' is not an executable interpreter (the engine's virtualenv is missing?)")
    module = ENGINE_MODULES.get(engine)
    if module is None:
        return
    if python == sys.executable:
        found = importlib.util.find_spec(module) is not None
    else:
        try:  # find_spec only: no import of the engine (seconds for vLLM)
            found = subprocess.run([python, "-c", _FIND, module], capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"{key}: cannot run '{python}': {exc}") from None
    if not found:
        where = f"'{python}'" if c.python else "this server's Python (set model_config.python to the engine's virtualenv)"
        raise ConfigError(f"{key}: work_mode {engine} needs the '{module}' package, which {where} cannot import")
