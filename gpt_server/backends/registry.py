"""One lazy registry per plugin family: name → "module:Class", plus entry points."""

from __future__ import annotations

import importlib
import importlib.util
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


BACKENDS: LazyRegistry[type] = LazyRegistry(
    "backends",
    {
        "llama_cpp": "gpt_server.backends.llama_cpp.backend:LlamaCppBackend",
        # embeddings, rerank, moderation
        "sentence_transformers": "gpt_server.backends.sentence_transformers.backend:SentenceTransformersBackend",
        "infinity": "gpt_server.backends.infinity.backend:InfinityBackend",
        # transformers in process
        "hf": "gpt_server.backends.hf.backend:HFBackend",
        # relays: an OpenAI-compatible upstream, or an engine server we start
        "openai": "gpt_server.backends.relay.backend:OpenAIRelayBackend",
        "vllm": "gpt_server.backends.relay.backend:EngineServerBackend",
        "sglang": "gpt_server.backends.relay.backend:EngineServerBackend",
        "lmdeploy-turbomind": "gpt_server.backends.relay.backend:EngineServerBackend",
        "lmdeploy-pytorch": "gpt_server.backends.relay.backend:EngineServerBackend",
        "trtllm": "gpt_server.backends.relay.backend:EngineServerBackend",
        "llama_cpp_server": "gpt_server.backends.relay.backend:EngineServerBackend",
        # speech
        "faster_whisper": "gpt_server.backends.faster_whisper.backend:FasterWhisperBackend",
        "piper": "gpt_server.backends.piper.backend:PiperBackend",
        # images
        "diffusers": "gpt_server.backends.diffusers.backend:DiffusersBackend",
        # benchmarks only: no model
        "echo": "gpt_server.backends.echo.backend:EchoBackend",
    },
)
