"""What every kind's suite shares: the class-scoped real server, the SDK client, and the
``covers`` tag that says which capability a test exercises (the ratchet checks that the
tags of a suite name every capability of its kind)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import openai
import pytest

from tests.helpers import Server, base_config, served

__all__ = ["Suite", "covers", "CAPABILITY_ATTR"]

CAPABILITY_ATTR = "contract_capabilities"
F = TypeVar("F", bound=Callable[..., Any])


def covers(*capabilities: str) -> Callable[[F], F]:
    """Tag a suite test with the capabilities (``chat``, ``embed`` …) it exercises."""

    def tag(fn: F) -> F:
        setattr(fn, CAPABILITY_ATTR, frozenset(capabilities))
        return fn

    return tag


class Suite:
    """Base of the kind suites. A subclass for one engine sets the served model names and
    implements :meth:`models` (or overrides the ``server`` fixture to share a server);
    ``skips`` maps a suite test's name to why this engine does not run it."""

    kind: ClassVar[str]
    skips: ClassVar[dict[str, str]] = {}
    env: ClassVar[dict[str, str] | None] = None  # extra environment of the server process
    start_timeout: ClassVar[float] = 180.0

    @classmethod
    @contextmanager
    def models(cls, tmp: Path) -> Iterator[list[dict[str, Any]]]:
        """The config's ``models:`` entries; a context, so upstreams can live around them."""
        raise NotImplementedError(f"{cls.__name__} must say which models it serves")

    @classmethod
    def configure(cls, config: dict[str, Any]) -> None:
        """Adjust the whole server config (gateway or worker settings) before start."""

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
        name = f"contract_{cls.__name__}"
        tmp = tmp_path_factory.mktemp(name)
        with cls.models(tmp) as models:
            config = base_config(models=models)
            cls.configure(config)
            with served(config, tmp, name, timeout=cls.start_timeout, env=cls.env) as srv:
                yield srv

    @pytest.fixture(scope="class")
    @classmethod
    def client(cls, server: Server) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0, timeout=300)
