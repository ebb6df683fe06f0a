"""One lazy registry per plugin family: name → "module:Class", plus entry points."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Generic, TypeVar

__all__ = ["LazyRegistry", "BACKENDS"]

T = TypeVar("T")


class LazyRegistry(Generic[T]):
    def __init__(self, family: str, builtins: dict[str, str]) -> None:
        self.family = family
        self._targets = dict(builtins)
        self._loaded: dict[str, T] = {}
        self._eps_loaded = False

    def register(self, name: str, target: str) -> None:
        self._targets[name] = target
        self._loaded.pop(name, None)

    def _load_entry_points(self) -> None:
        if self._eps_loaded:
            return
        self._eps_loaded = True
        for ep in entry_points(group=f"gpt_server.{self.family}"):
            self._targets.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._targets)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._targets

    def get(self, name: str) -> T:
        if name in self._loaded:
            return self._loaded[name]
        self._load_entry_points()
        if name not in self._targets:
            raise KeyError(f"no {self.family} named '{name}' (known: {', '.join(self.names())})")
        module, _, attr = self._targets[name].partition(":")
        obj = getattr(importlib.import_module(module), attr)
        self._loaded[name] = obj
        return obj


BACKENDS: LazyRegistry[type] = LazyRegistry(
    "backends",
    {
        "llama_cpp": "gpt_server.backends.llama_cpp.backend:LlamaCppBackend",
    },
)
