"""The base of every setting that engines share with the config: ``ConfigError``, the
``model_config`` base model each engine's ``Options`` extends, and ``pkg:`` model paths.

Kept apart from ``config`` so that engines (``backends``) depend on it and not on the config
loader, which reads the engine registry: no import cycle between the two.
"""

from __future__ import annotations

import importlib.resources
import importlib.util

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ConfigError", "Section", "ModelConfig", "resolve_model_path"]


class ConfigError(ValueError):
    """Invalid configuration; the message names the key and the reason."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())


class ModelConfig(Section):
    """``model_config``: the keys every engine takes. Each engine's ``Options`` (declared in
    its folder under ``gpt_server/backends/``) extends it with the engine's own keys, and the
    entry's ``model_config`` is validated by the chosen engine's ``Options``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    model_name_or_path: str = Field(description="model file/dir, or pkg:<package>/<path>")


def resolve_model_path(spec: str) -> str:
    """Resolve ``pkg:<package>/<path>`` to a file inside an installed package.

    Other values are returned unchanged (a local path, or an id an engine understands).
    """
    if not spec.startswith("pkg:"):
        return spec
    rest = spec[4:]
    package, _, inner = rest.partition("/")
    if not package or not inner:
        raise ConfigError(f"'{spec}' must look like pkg:<python_package>/<path inside it>")
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"package '{package}' is not installed (pip install it)")
    target = importlib.resources.files(package).joinpath(inner)
    if not target.is_file() and not target.is_dir():
        raise ConfigError(f"'{inner}' does not exist inside package '{package}'")
    return str(target)
