"""The engines this build knows: the one list of ``work_mode`` names.

Each engine folder under ``gpt_server/backends/`` declares ``ENGINES`` (one or more
:class:`Engine`) in its ``__init__.py``, which stays light: the options model and where the
backend class lives, not the engine library itself. A third-party package adds engines
through the entry-point group ``gpt_server.backends``: each entry point names an
:class:`Engine` (or a sequence of them), or a ``Backend`` subclass with an ``Options``
class and a ``kinds`` set. Nothing else lists engines; config validation, the worker and
the docs all read this registry.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from ..settings import ModelConfig

if TYPE_CHECKING:
    from ..config import ModelEntry
    from .base import Backend

__all__ = ["Engine", "ENTRY_POINT_GROUP", "engines", "engine", "refresh"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "gpt_server.backends"


@dataclass(frozen=True)
class Engine:
    """One ``work_mode``: its options model, the kinds it serves, and its backend class."""

    name: str
    backend: str  # "package.module:Class", imported only when a worker starts
    options: type[ModelConfig]
    kinds: frozenset[str]
    description: str = ""
    # checks of an entry's options beyond their types, at config validation: (key, reason) per refused key
    check: Callable[[ModelConfig], list[tuple[str, str]]] | None = None
    # checks of this host before a worker starts (an engine's own interpreter …); raises ConfigError
    preflight: Callable[[ModelEntry], None] | None = None

    def available(self) -> bool:
        """The backend's module exists in this build (its engine library may still be missing)."""
        module = self.backend.partition(":")[0]
        try:
            return importlib.util.find_spec(module) is not None
        except (ModuleNotFoundError, ValueError):
            return False

    def load(self) -> type[Backend]:
        module, _, attr = self.backend.partition(":")
        cls: type[Backend] = getattr(importlib.import_module(module), attr)
        return cls


_ENGINES: dict[str, Engine] | None = None


def _builtin() -> Iterable[Engine]:
    package = importlib.import_module(__package__ or "gpt_server.backends")
    for mod in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not mod.ispkg:
            continue
        declared = getattr(importlib.import_module(f"{package.__name__}.{mod.name}"), "ENGINES", ())
        yield from declared


def _as_engines(name: str, value: str, obj: Any) -> list[Engine]:
    if isinstance(obj, Engine):
        return [obj]
    if isinstance(obj, (list, tuple)) and all(isinstance(e, Engine) for e in obj):
        return list(obj)
    if isinstance(obj, type):  # a Backend subclass: its Options and kinds declare the rest
        return [
            Engine(
                name=name,
                backend=value,
                options=getattr(obj, "Options", ModelConfig),
                kinds=frozenset(getattr(obj, "kinds", ())),
                description=(obj.__doc__ or "").strip().split("\n")[0],
            )
        ]
    raise TypeError(f"entry point '{name}' = '{value}' is neither an Engine nor a Backend class")


def _plugins(taken: set[str]) -> Iterable[Engine]:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found = _as_engines(ep.name, ep.value, ep.load())
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not take the server down
            log.warning("engine plug-in '%s' (%s) could not be loaded: %s", ep.name, ep.value, exc)
            continue
        for e in found:
            if e.name in taken:
                log.warning("engine plug-in '%s' ignored: work_mode '%s' is already defined", ep.value, e.name)
                continue
            taken.add(e.name)
            yield e


def engines() -> dict[str, Engine]:
    """Every engine of this build and of installed plug-ins, by ``work_mode``."""
    global _ENGINES
    if _ENGINES is None:
        found: dict[str, Engine] = {}
        for e in _builtin():
            if e.name in found:
                raise RuntimeError(f"work_mode '{e.name}' is declared by two engine folders")
            found[e.name] = e
        for e in _plugins(set(found)):
            found[e.name] = e
        _ENGINES = found
    return dict(_ENGINES)


def engine(name: str) -> Engine:
    """The engine called ``name`` (KeyError when none is)."""
    return engines()[name]


def refresh() -> None:
    """Forget what was discovered (after installing a plug-in at run time)."""
    global _ENGINES
    _ENGINES = None
