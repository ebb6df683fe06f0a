"""Kinds of model and the capabilities they offer, each declared once by its own slice.

A *capability* is one thing a worker can be asked to do (``chat``, ``embed``,
``speech`` …) together with the payload model the worker validates for it. A *kind* is
what a config entry's ``model_type`` names (``auto`` for chat LLMs, ``embedding`` …): its
capabilities, the engine used when the entry names none, and the legacy gpt_server
``model_type`` names that mean it.

Each kind's protocol module (``openai.py``, ``embeddings.py``, ``audio.py`` …) declares
its capabilities and kind with :func:`declare_capability` and :func:`declare_kind`. There
is no central table to edit: :func:`kinds` imports every module of this package once and
collects what they declared, so a new kind is a new module here plus its route slice.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

__all__ = [
    "Capability",
    "Kind",
    "declare_capability",
    "declare_kind",
    "capability",
    "capabilities",
    "kinds",
    "kind",
    "legacy_model_types",
    "kind_label",
]


class Capability(str):
    """A declared capability: compares and serialises as its name (``"embed"``), and knows
    the model its worker payload is validated with (``None`` for the generation route,
    which carries a ``GenerateRequest``) and the model kinds that offer it."""

    __slots__ = ("payload", "kinds")
    payload: type[BaseModel] | None
    kinds: frozenset[str]

    def __new__(cls, name: str, payload: type[BaseModel] | None = None, kinds: frozenset[str] = frozenset()) -> Capability:
        obj = super().__new__(cls, name)
        obj.payload = payload
        obj.kinds = kinds
        return obj

    def __repr__(self) -> str:
        return f"Capability({str.__repr__(self)})"

    def parse(self, data: Any) -> BaseModel:
        """``data`` (plain JSON data or the model itself) as this capability's payload model."""
        if self.payload is None:
            raise TypeError(f"{self} has no invoke payload (it is served by the generation route)")
        if isinstance(data, self.payload):
            return data
        return self.payload.model_validate(data)


@dataclass(frozen=True)
class Kind:
    """A model kind as config.yaml's ``model_type`` names it. Its capabilities are the ones
    declared for it (a new capability of an existing kind does not edit the kind)."""

    name: str
    default_engine: str
    description: str
    # what people call it (dashboards, listings): "chat" for ``auto``, "embeddings" …
    label: str = ""
    legacy_names: tuple[str, ...] = ()
    # legacy names that also pick an engine (gpt_server's ``embedding_infinity`` …)
    legacy_engines: Mapping[str, str] = field(default_factory=dict)

    @property
    def capabilities(self) -> frozenset[Capability]:
        _load()
        return frozenset(c for c in _CAPABILITIES.values() if self.name in c.kinds)


_CAPABILITIES: dict[str, Capability] = {}
_KINDS: dict[str, Kind] = {}
_loaded = False


def declare_capability(name: str, payload: type[BaseModel] | None = None, *, kinds: tuple[str, ...]) -> Capability:
    """Declare a capability once, in its own protocol module: its payload model (None: the
    generation route) and the model kinds that offer it."""
    if name in _CAPABILITIES:
        raise ValueError(f"capability '{name}' is declared twice")
    cap = Capability(name, payload, frozenset(kinds))
    _CAPABILITIES[name] = cap
    return cap


def declare_kind(kind: Kind) -> Kind:
    """Declare a model kind once, in its protocol module."""
    if kind.name in _KINDS:
        raise ValueError(f"model kind '{kind.name}' is declared twice")
    _KINDS[kind.name] = kind
    return kind


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = importlib.import_module(__package__ or "gpt_server.protocol")
    for mod in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package.__name__}.{mod.name}")


def kinds() -> dict[str, Kind]:
    """Every declared kind, by ``model_type`` name."""
    _load()
    return dict(_KINDS)


def kind(name: str) -> Kind:
    _load()
    return _KINDS[name]


def kind_label(name: str) -> str:
    """What people call the kind ``name`` ("chat" for ``auto``); an undeclared name as is."""
    k = kinds().get(name)
    return (k.label or k.name) if k is not None else name


def capabilities() -> dict[str, Capability]:
    """Every declared capability, by name."""
    _load()
    return dict(_CAPABILITIES)


def capability(name: str) -> Capability:
    """The declared capability called ``name`` (KeyError when none is)."""
    _load()
    return _CAPABILITIES[name]


def legacy_model_types() -> dict[str, tuple[str, str | None]]:
    """gpt_server's ``model_type`` names: name → (kind, engine it forces or None)."""
    out: dict[str, tuple[str, str | None]] = {}
    for k in kinds().values():
        for n in k.legacy_names:
            out[n] = (k.name, None)
        for n, engine in k.legacy_engines.items():
            out[n] = (k.name, engine)
    return out
