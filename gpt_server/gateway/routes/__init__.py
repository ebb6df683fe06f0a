"""Thin routes: get the service from app.state, call it, return JSON or SSE.

Every module in this package is included by ``build_app``: its ``router`` behind the
API-key guard, its optional ``public_router`` without it (static UI assets, say).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

__all__ = ["route_modules"]


def route_modules() -> list[ModuleType]:
    return [importlib.import_module(f"{__name__}.{m.name}") for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)]
