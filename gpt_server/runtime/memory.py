"""The memory budget: how much a replica is expected to take, and how much the host has."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import ModelEntry
from ..settings import ConfigError, resolve_model_path

__all__ = ["estimate_bytes", "default_budget", "ENGINE_FACTORS", "BUDGET_SHARE"]

# resident bytes per byte of model files (weights loaded once, plus buffers and the runtime)
ENGINE_FACTORS = {"llama_cpp": 1.3, "llama_cpp_server": 1.3}
DEFAULT_FACTOR = 2.0
PROCESS_OVERHEAD = 64 * 2**20  # an interpreter with the server's imports, before any weights
BUDGET_SHARE = 0.8  # of the host's RAM, when serve_args.memory_budget is not set


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    if path.is_dir():
        for root, _dirs, files in os.walk(path):
            for f in files:
                try:
                    total += os.stat(os.path.join(root, f)).st_size
                except OSError:
                    pass
    return total


def estimate_bytes(entry: ModelEntry) -> int:
    """One replica's footprint: ``memory_estimate`` when set, else the model files' size times
    the engine's factor (remote upstreams: only the process). Blocking (walks the files)."""
    if entry.memory_estimate is not None:
        return entry.memory_estimate
    try:
        path = Path(resolve_model_path(entry.model_config_.model_name_or_path))
        size = _size(path)
    except (ConfigError, OSError):  # a remote name (openai relay) or a path that is not there
        size = 0
    factor = ENGINE_FACTORS.get(entry.work_mode or "", DEFAULT_FACTOR)
    return int(size * factor) + PROCESS_OVERHEAD


def default_budget() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
    return int(total * BUDGET_SHARE)
