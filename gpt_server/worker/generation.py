"""One chat/completion on a worker, from admission to the last event, written once.

The worker's HTTP route streams a ``Generation``'s events as NDJSON; a gateway in the
same process (``in_process: true`` replicas) iterates the same events as objects, in
its own request task: no serialisation, no second task and no queue per token.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator

from ..errors import BadRequestError, GatewayError, InternalError
from ..protocol.deltas import ADMITTED, Answer
from ..protocol.worker import DeltaEvent, ErrorEvent, Event, GenerateRequest, UsageEvent
from .runtime import WorkerRuntime

__all__ = ["Generation", "error_event"]

log = logging.getLogger(__name__)


def error_event(exc: GatewayError) -> ErrorEvent:
    return ErrorEvent(status=exc.status, type=exc.openai_type, message=exc.message, param=exc.param, code=exc.code)


class Generation:
    """An admitted generation whose first event is known, or (``admitted``) whose sequences the
    engine has taken, where the stream was asked to say so (``DeltaWriter.announce``).

    ``start`` raises a ``GatewayError`` (bad request, 429/503 admission, an engine that
    fails before its first event) with nothing left held. After it, ``events()`` yields
    every event, a failure mid-stream as a final ``ErrorEvent``; ``aclose()`` (also run
    when ``events()`` ends or is closed) stops the engine's work and frees the slot, once.
    An ``admitted`` generation's failures before its first event come as events too.
    """

    def __init__(self, runtime: WorkerRuntime, agen: AsyncIterator[Event], first: Event) -> None:
        self.runtime = runtime
        self._agen = agen
        self.admitted = first is ADMITTED
        self._first: Event | None = None if self.admitted else first
        self._closed = False

    @classmethod
    async def start(cls, runtime: WorkerRuntime, req: GenerateRequest) -> Generation:
        if "chat" not in runtime.backend.capabilities and req.kind == "chat":
            raise BadRequestError(f"model '{runtime.model_name}' does not support chat", param="model")
        runtime.admit()
        agen: AsyncIterator[Event] | None = None
        try:
            agen = runtime.backend.generate(req)  # a backend may refuse before its first event
            first = await agen.__anext__()
        except StopAsyncIteration:
            runtime.release()
            raise InternalError("the engine produced no output") from None
        except GatewayError:
            runtime.release()
            raise
        except Exception as exc:  # the stream must end with an error event
            runtime.release()
            runtime.last_error = str(exc)
            log.exception("generation failed")
            raise InternalError(f"generation failed: {type(exc).__name__}") from exc
        except BaseException:  # cancelled before the first event: stop the engine's work
            try:
                if agen is not None:
                    await agen.aclose()  # type: ignore[attr-defined]
            finally:
                runtime.release()
            raise
        return cls(runtime, agen, first)

    async def events(self) -> AsyncGenerator[Event, None]:
        runtime = self.runtime
        try:
            ev = self._first if self._first is not None else await self._agen.__anext__()
            while True:
                if isinstance(ev, UsageEvent):
                    runtime.tokens_total += ev.completion_tokens
                yield ev
                ev = await self._agen.__anext__()
        except StopAsyncIteration:
            pass
        except GatewayError as exc:
            yield error_event(exc)
        except Exception as exc:
            runtime.last_error = str(exc)
            log.exception("generation failed mid-stream")
            yield error_event(InternalError(f"generation failed: {type(exc).__name__}"))
        finally:
            await self.aclose()

    async def whole(self, answer: Answer) -> list[Event]:
        """Every event, each choice's deltas as one (``answer``: the deltas the engine thread
        kept, where it was given the answer's writer), then the finishes, usage or error."""
        rest: list[Event] = []
        async with contextlib.aclosing(self.events()) as events:
            async for ev in events:
                if isinstance(ev, DeltaEvent):
                    answer.add(ev)
                else:
                    rest.append(ev)
        return [*answer.events(), *rest]

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._agen.aclose()  # type: ignore[attr-defined]
        finally:
            self.runtime.release()
