"""A lazy registry for one plugin family: name → "module:attr", plus entry points.

Third-party packages add members through the entry-point group ``gpt_server.<family>``.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import entry_points
from typing import Generic, TypeVar

__all__ = ["LazyRegistry"]

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
        """Known and importable (its module exists in this build)."""
        self._load_entry_points()
        if name not in self._targets:
            return False
        module = self._targets[name].partition(":")[0]
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            return False

    def available(self) -> list[str]:
        return [n for n in self.names() if n in self]

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
