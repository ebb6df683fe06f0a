"""Relay backends: engine servers on loopback and remote OpenAI-compatible upstreams."""

from __future__ import annotations

from ..registry import Engine
from .commands import LAUNCHERS
from .options import EngineServerOptions, UpstreamOptions

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
        )
        for name in LAUNCHERS
    ),
)
