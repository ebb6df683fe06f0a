"""Relay backends: engine servers on loopback and remote OpenAI-compatible upstreams."""

from __future__ import annotations

from functools import partial

from ..registry import Engine
from .commands import LAUNCHERS
from .engine_flags import check
from .options import EngineServerOptions, UpstreamOptions
from .preflight import check_host

__all__ = ["ENGINES"]


_RELAYED_KINDS = frozenset({"auto", "embedding"})
# engines with a rerank API the relay maps /v1/rerank onto
_RERANKING = frozenset({"openai", "vllm", "sglang"})

ENGINES = (
    Engine(
        name="openai",
        backend="gpt_server.backends.relay.backend:OpenAIRelayBackend",
        options=UpstreamOptions,
        kinds=_RELAYED_KINDS | {"rerank"},
        description="any remote OpenAI-compatible URL (model_config.api_base)",
    ),
    *(
        Engine(
            name=name,
            backend="gpt_server.backends.relay.backend:EngineServerBackend",
            options=EngineServerOptions,
            kinds=_RELAYED_KINDS | ({"rerank"} if name in _RERANKING else set()),
            description=f"the engine's own OpenAI server ({name}) on loopback, optionally from its own virtualenv",
            check=partial(check, name),
            preflight=partial(check_host, name),
        )
        for name in LAUNCHERS
    ),
)
