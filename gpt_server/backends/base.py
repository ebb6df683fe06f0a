"""The backend contract every engine implements."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel

from ..settings import ModelConfig

if TYPE_CHECKING:  # the entry's type only: engines depend on settings, not on the config loader
    from ..config import ModelEntry
from ..protocol.kinds import Capability
from ..protocol.worker import Event, GenerateRequest

__all__ = [
    "ANSWER_SINK", "AnswerSink", "Backend", "BackendSpec", "BinaryResult", "InvokeResult", "payload_as", "runtime_lora_unsupported",
]

P = TypeVar("P", bound=BaseModel)


@dataclass
class BinaryResult:
    """A non-JSON result (audio, image bytes), whole or streamed in chunks."""

    media_type: str
    body: bytes | AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)


InvokeResult = dict[str, Any] | BinaryResult


class AnswerSink(Protocol):
    """Where an engine's thread may send a finished JSON result itself (``transport.lane``): the
    caller of ``invoke`` then finds ``sent`` true and sends nothing. The hop back to the event loop
    (a thread wake-up and the GIL handed over, ~0.2 ms on two cores) and the loop's own work are
    then off the answer's path."""

    @property
    def sent(self) -> bool:
        """Whether the result has been sent."""
        ...

    def send(self, result: dict[str, Any]) -> bool:
        """Send ``result`` now, from any thread; whether it went (else the caller answers as usual)."""
        ...


# set by the worker for a call whose answer may leave from the engine's thread (one capability's
# result, whole); a backend that finishes results on its engine's thread looks here
ANSWER_SINK: ContextVar[AnswerSink | None] = ContextVar("gpt_server_answer_sink", default=None)


def payload_as(payload: BaseModel, model: type[P]) -> P:
    """``payload`` narrowed to the payload model its capability declares (the worker
    validated it already; a mismatch is a bug, not a client error)."""
    if not isinstance(payload, model):
        raise TypeError(f"expected a {model.__name__} payload, got {type(payload).__name__}")
    return payload


@dataclass
class BackendSpec:
    """What a backend is given: the model entry and the resources of its worker."""

    entry: ModelEntry
    model_path: str
    gpus: list[int] = field(default_factory=list)
    n_threads: int | None = None


class Backend(ABC):
    """Base class. A backend declares ``capabilities`` and implements those methods.

    ``options`` is the entry's ``model_config`` as the engine's own ``Options`` model
    (declared with the engine in its folder's ``__init__.py``); a subclass narrows its type.
    """

    capabilities: frozenset[str] = frozenset()
    options: ModelConfig

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.options = spec.entry.model_config_

    @abstractmethod
    def load(self) -> None:
        """Load weights (blocking; the runtime calls it in a thread)."""

    def close(self) -> None:  # optional hook
        """Release engine resources."""
        return None

    @property
    def capacity(self) -> int:
        """How many requests the engine runs at once."""
        return 1

    @property
    def context_length(self) -> int | None:
        return None

    def healthy(self) -> bool:
        return True

    def stats(self) -> dict[str, int]:
        """Engine counters the worker's ``/worker/info`` shows under ``engine_stats`` (default none)."""
        return {}

    def fingerprint(self) -> str:
        """The ``system_fingerprint`` of this model's responses: a hash of the model's name
        and files, the engine and the GPT Server build, so it changes when any of them does."""
        from .. import __version__

        e = self.spec.entry
        parts = (e.name, e.work_mode or "", self.spec.model_path, type(self).__qualname__, __version__)
        return "fp_" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]

    async def invoke(self, capability: Capability, payload: BaseModel) -> InvokeResult:
        """Non-generation capabilities (embed, rerank, classify, transcribe, speech, image …).

        ``payload`` is an instance of ``capability.payload``, already validated at the
        worker boundary. Return a JSON-able dict, or a ``BinaryResult``. Raise
        ``GatewayError`` subclasses for client errors.
        """
        from ..errors import BadRequestError

        raise BadRequestError(f"this model does not support {capability}", param="model")

    async def load_adapter(self, name: str, path: str) -> None:
        """Serve LoRA adapter ``path`` (on this host) as model ``name`` from now on. Engines
        that cannot change adapters while they run answer 400, naming the engine."""
        raise runtime_lora_unsupported(self.spec.entry.work_mode or "")

    async def unload_adapter(self, name: str) -> None:
        """Stop serving the adapter ``name`` loaded with ``load_adapter``."""
        raise runtime_lora_unsupported(self.spec.entry.work_mode or "")

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Event]:
        """Chat/completion: yield deltas, finishes, then one usage event."""
        raise NotImplementedError
        yield  # pragma: no cover


def runtime_lora_unsupported(engine: str) -> Exception:
    """The 400 of an engine that cannot load LoRA adapters while it runs."""
    from ..errors import BadRequestError

    return BadRequestError(
        f"engine '{engine}' does not load LoRA adapters at run time (work_mode vllm with "
        "model_config.runtime_lora: true does); declare adapters in model_config.lora instead",
        param="model", code="runtime_lora_unsupported",
    )
