"""How streams end: one framing (gateway/sse.py), one hang-up path (DisconnectWatch), and
every stream kind ends with its final event, an error event, or a cut, never a short
stream that looks complete.

The gateway tests run the real gateway app, relay, registry and worker app, with the
workers in this process (through the byte bridge, as over HTTP) and small fake backends
that fail where a real engine could.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from starlette.types import Message

from gpt_server.backends.base import Backend, BackendSpec, BinaryResult, payload_as
from gpt_server.backends.diffusers import DiffusersOptions
from gpt_server.backends.diffusers.backend import DiffusersBackend
from gpt_server.backends.echo.backend import EchoBackend
from gpt_server.config import Config
from gpt_server.controller.client import LocalController
from gpt_server.controller.dispatch import make_policy
from gpt_server.controller.registry import Registry
from gpt_server.errors import BadRequestError, UpstreamError
from gpt_server.gateway.app import build_app
from gpt_server.gateway.sse import SSEResponse, typed_error
from gpt_server.launcher import LocalWorker, _local_workers
from gpt_server.protocol.audio import SpeechPayload, TranscribePayload
from gpt_server.protocol.kinds import Capability
from gpt_server.protocol.worker import DeltaEvent, Event, GenerateRequest
from gpt_server.transport.inproc import InProcessTransport
from gpt_server.web.responses import ClosingStreamingResponse, DisconnectWatch, StreamAborted

# ---- raw ASGI plumbing ------------------------------------------------------------------


class _Client:
    """One ASGI request: ``receive`` gives the body, then waits for ``hang_up()``."""

    def __init__(self, body: bytes = b"") -> None:
        self.body = body
        self.sent: list[Message] = []
        self._gone = asyncio.Event()
        self._body_sent = False

    async def receive(self) -> Message:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def hang_up(self) -> None:
        self._gone.set()

    @property
    def status(self) -> int | None:
        return next((m["status"] for m in self.sent if m["type"] == "http.response.start"), None)

    @property
    def body_bytes(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    @property
    def complete(self) -> bool:
        return any(m["type"] == "http.response.body" and not m.get("more_body", False) for m in self.sent)


def _scope(path: str = "/", body: bytes = b"") -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"host", b"localhost")],
        "client": ("test", 1), "server": ("test", 80),
    }


def _events(body: bytes) -> list[Any]:
    """The data of each SSE event ('[DONE]' as is, the rest parsed)."""
    out: list[Any] = []
    for block in body.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


class _Tracked:
    """An async iterator of chunks that records how it ended."""

    def __init__(self, chunks: list[bytes], then: BaseException | None = None, wait: bool = False) -> None:
        self.chunks = chunks
        self.then = then
        self.wait = wait
        self.closed = False
        self.on_close = 0

    async def gen(self) -> AsyncIterator[bytes]:
        try:
            for c in self.chunks:
                yield c
            if self.wait:
                await asyncio.sleep(30)
            if self.then is not None:
                raise self.then
        finally:
            self.closed = True

    def close(self) -> None:
        self.on_close += 1


# ---- DisconnectWatch ----------------------------------------------------------------------


def test_disconnect_watch_cancels_its_block_and_nothing_else() -> None:
    async def main() -> None:
        client = _Client()
        await client.receive()  # the body was read
        reached = False
        async with DisconnectWatch(client.receive) as watch:
            asyncio.get_running_loop().call_later(0.05, client.hang_up)
            await asyncio.sleep(30)
            reached = True
        assert watch.gone and not reached
        await asyncio.sleep(0)  # the task is not left cancelled
        assert asyncio.current_task().cancelling() == 0

        other = _Client()
        await other.receive()

        async def block() -> None:
            async with DisconnectWatch(other.receive):
                await asyncio.sleep(30)

        task = asyncio.create_task(block())
        await asyncio.sleep(0.02)
        task.cancel()  # a cancellation that is not a hang-up goes on
        with pytest.raises(asyncio.CancelledError):
            await task

        finished = _Client()
        await finished.receive()
        async with DisconnectWatch(finished.receive) as watch:
            await asyncio.sleep(0.01)
        assert not watch.gone

    asyncio.run(main())


# ---- ClosingStreamingResponse ------------------------------------------------------------


def _run_response(make: Callable[[], Any], hang_up_after: float | None = None) -> tuple[_Client, BaseException | None]:
    async def main() -> tuple[_Client, BaseException | None]:
        client = _Client()
        await client.receive()
        if hang_up_after is not None:
            asyncio.get_running_loop().call_later(hang_up_after, client.hang_up)
        try:
            await make()(_scope(), client.receive, client.send)
        except Exception as exc:  # noqa: BLE001 - returned for the test to check
            return client, exc
        return client, None

    return asyncio.run(main())


def test_byte_stream_error_before_the_first_chunk_is_its_status() -> None:
    src = _Tracked([], then=BadRequestError("no such voice", param="voice"))
    client, exc = _run_response(lambda: ClosingStreamingResponse(src.gen(), on_close=src.close))
    assert exc is None and client.status == 400 and client.complete
    assert json.loads(client.body_bytes)["error"] == {"message": "no such voice", "type": "invalid_request_error",
                                                      "param": "voice", "code": None}
    assert src.closed and src.on_close == 1

    src = _Tracked([], then=RuntimeError("engine exploded"))
    client, exc = _run_response(lambda: ClosingStreamingResponse(src.gen(), on_close=src.close))
    assert exc is None and client.status == 500
    assert json.loads(client.body_bytes)["error"]["type"] == "server_error"


def test_byte_stream_failing_after_its_status_line_is_cut() -> None:
    src = _Tracked([b"RIFF", b"more"], then=UpstreamError("lost", code="worker_lost"))
    client, exc = _run_response(lambda: ClosingStreamingResponse(src.gen(), on_close=src.close))
    assert isinstance(exc, StreamAborted)  # the server closes the connection: no final chunk
    assert client.status == 200 and client.body_bytes == b"RIFFmore" and not client.complete
    assert src.closed and src.on_close == 1


def test_byte_stream_hang_up_while_waiting_stops_the_work() -> None:
    src = _Tracked([], wait=True)
    client, exc = _run_response(lambda: ClosingStreamingResponse(src.gen(), on_close=src.close), hang_up_after=0.05)
    assert exc is None and client.sent == [] and src.closed and src.on_close == 1

    src = _Tracked([b"a"], wait=True)
    client, exc = _run_response(lambda: ClosingStreamingResponse(src.gen(), on_close=src.close), hang_up_after=0.05)
    assert exc is None and client.body_bytes == b"a" and src.closed and src.on_close == 1


# ---- SSEResponse --------------------------------------------------------------------------


async def _batches(items: list[list[Any]], then: BaseException | None = None) -> AsyncIterator[list[Any]]:
    for b in items:
        yield b
    if then is not None:
        raise then


def test_chat_stream_error_ending_is_an_error_event_then_done() -> None:
    lost = UpstreamError("the model worker stopped responding during generation", code="worker_lost")
    client, exc = _run_response(lambda: SSEResponse(_batches([[{"a": 1}, {"a": 2}]], then=lost)))
    assert exc is None and client.complete
    events = _events(client.body_bytes)
    assert events[:2] == [{"a": 1}, {"a": 2}] and events[-1] == "[DONE]"
    assert events[2] == {"error": {"message": lost.message, "type": "server_error", "param": None, "code": "worker_lost"}}


def test_typed_stream_endings() -> None:
    ok = lambda: SSEResponse(_batches([[{"type": "x.delta"}], [{"type": "x.done"}]]), done=None, error_event=typed_error)  # noqa: E731
    client, _ = _run_response(ok)
    assert _events(client.body_bytes) == [{"type": "x.delta"}, {"type": "x.done"}] and client.complete

    bad = lambda: SSEResponse(_batches([[{"type": "x.delta"}]], then=RuntimeError("boom")), done=None, error_event=typed_error)  # noqa: E731
    client, _ = _run_response(bad)
    events = _events(client.body_bytes)
    assert events[0] == {"type": "x.delta"} and len(events) == 2 and client.complete
    assert events[1]["type"] == "error" and events[1]["error"]["type"] == "server_error"


def test_event_stream_hang_up_closes_the_source() -> None:
    src = _Tracked([b"x"], wait=True)

    async def batches() -> AsyncIterator[list[Any]]:
        async for c in src.gen():
            yield [{"c": c.decode()}]

    client, exc = _run_response(lambda: SSEResponse(batches(), on_close=src.close), hang_up_after=0.05)
    assert exc is None and _events(client.body_bytes) == [{"c": "x"}] and not client.complete
    assert src.closed and src.on_close == 1


# ---- the gateway, with workers in this process ------------------------------------------


class _Speech(Backend):
    """Two chunks of 'audio', then the engine fails (or the stream ends, when asked)."""

    capabilities: frozenset[str] = frozenset({"speech"})

    def load(self) -> None:
        return None

    async def invoke(self, capability: Capability, payload: BaseModel) -> BinaryResult:
        fail = payload_as(payload, SpeechPayload).input == "fail"

        async def chunks() -> AsyncIterator[bytes]:
            yield b"RIFF"
            await asyncio.sleep(0.01)
            yield b"DATA"
            await asyncio.sleep(0.01)
            if fail:
                raise RuntimeError("synthesis failed")

        return BinaryResult("audio/wav", chunks(), {"x-audio-sample-rate": "22050"})


class _Transcribe(Backend):
    """NDJSON transcript events: complete, failing mid-way, or ending before the final event."""

    capabilities: frozenset[str] = frozenset({"transcribe"})

    def load(self) -> None:
        return None

    async def invoke(self, capability: Capability, payload: BaseModel) -> BinaryResult:
        how = payload_as(payload, TranscribePayload).prompt

        async def lines() -> AsyncIterator[bytes]:
            yield b'{"type":"transcript.text.delta","delta":"Hello"}\n'
            await asyncio.sleep(0.01)
            if how == "fail":
                raise RuntimeError("decoder failed")
            if how == "ok":
                yield b'{"type":"transcript.text.done","text":"Hello"}\n'

        return BinaryResult("application/x-ndjson", lines())


class _Pipe:
    """A diffusers-like pipeline whose call fails as diffusers' own checks or a broken engine do."""

    tokenizer = None
    started = threading.Event()

    def __call__(self, prompt: str, num_inference_steps: int, height: int, width: int, callback_on_step_end: Any = None,
                 generator: Any = None) -> Any:
        if prompt == "refused":
            raise ValueError("`height` and `width` are not what this pipeline wants")
        if prompt == "slow":
            _Pipe.started.set()
            for step in range(100_000):
                threading.Event().wait(0.01)
                callback_on_step_end(self, step, 0, {})
        raise RuntimeError("CUDA out of memory")


class _Pipes:
    base = _Pipe()
    class_name = "StableDiffusionPipeline"

    def get(self, task: str) -> Any:
        return self.base


class _Images(DiffusersBackend):
    """The real diffusers backend (job planning, error mapping, cancellation) over a fake pipeline."""

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        self.options = DiffusersOptions(model_name_or_path="echo")  # its entry is an echo entry

    def load(self) -> None:
        self.pipes = _Pipes()  # type: ignore[assignment]


class _FailsLater(EchoBackend):
    """Chat and completions: one delta, then the engine fails."""

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Event]:
        yield DeltaEvent(index=0, text="partial")
        await asyncio.sleep(0.01)
        raise RuntimeError("engine died")


_BACKENDS: dict[str, type[Backend]] = {"tts": _Speech, "asr": _Transcribe, "img": _Images, "llm": _FailsLater}


def _config() -> Config:
    entry = {"model_config": {"model_name_or_path": "echo"}, "work_mode": "echo", "device": "cpu",
             "workers": [{"gpus": [], "in_process": True}]}
    return Config.model_validate({"model_worker_args": {"heartbeat_interval": 0.5},
                                  "models": [{name: entry} for name in _BACKENDS]})


@contextlib.asynccontextmanager
async def _gateway() -> AsyncIterator[tuple[Any, list[LocalWorker]]]:
    cfg = _config()
    registry = Registry(make_policy("round_robin"))
    transport = InProcessTransport()
    app = build_app(cfg, LocalController(registry), local=transport)  # first: building it blocks the loop (heartbeats)
    workers = _local_workers(cfg, registry, transport)
    for w in workers:
        w.runtime.backend = _BACKENDS[w.model](w.runtime.backend.spec)
        await w.start()
    async with asyncio.timeout(10):
        while len(registry.workers) < len(workers):
            await asyncio.sleep(0.01)
    try:
        yield app, workers
    finally:
        await app.state.workers.aclose()
        for w in workers:
            await w.stop()


def _post(app: Any, path: str, **kw: Any) -> Any:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://localhost").post(path, **kw)


def _inflight(workers: list[LocalWorker]) -> list[int]:
    return [w.runtime.inflight for w in workers]


def test_chat_and_completion_streams_end_with_an_error_event_then_done() -> None:
    async def main() -> None:
        async with _gateway() as (app, workers):
            chat = {"model": "llm", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            events = _events((await _post(app, "/v1/chat/completions", json=chat)).content)
            assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            assert events[1]["choices"][0]["delta"] == {"content": "partial"}
            assert events[2]["error"]["type"] == "server_error" and "RuntimeError" in events[2]["error"]["message"]
            assert events[3:] == ["[DONE]"]
            completion = {"model": "llm", "prompt": "hi", "stream": True}
            events = _events((await _post(app, "/v1/completions", json=completion)).content)
            assert events[0]["choices"][0]["text"] == "partial"
            assert "error" in events[1] and events[2:] == ["[DONE]"]
            assert _inflight(workers) == [0, 0, 0, 0]

    asyncio.run(main())


def test_speech_sse_worker_failure_ends_with_an_error_event() -> None:
    async def main() -> None:
        async with _gateway() as (app, workers):
            body = {"model": "tts", "input": "fine", "stream_format": "sse", "response_format": "wav"}
            r = await _post(app, "/v1/audio/speech", json=body)
            events = _events(r.content)
            assert r.status_code == 200 and r.headers["x-audio-sample-rate"] == "22050"
            assert events[-1] == {"type": "speech.audio.done"}
            assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == b"RIFFDATA"

            r = await _post(app, "/v1/audio/speech", json={**body, "input": "fail"})
            events = _events(r.content)
            assert [e["type"] for e in events][-1] == "error" and "[DONE]" not in events
            assert all(e["type"] != "speech.audio.done" for e in events)
            assert events[-1]["error"]["code"] == "worker_lost" and events[-1]["error"]["type"] == "server_error"
            assert _inflight(workers) == [0, 0, 0, 0]

    asyncio.run(main())


def test_speech_audio_worker_failure_cuts_the_response() -> None:
    async def main() -> None:
        async with _gateway() as (app, workers):
            body = {"model": "tts", "input": "fine", "stream": True, "response_format": "wav"}
            r = await _post(app, "/v1/audio/speech", json=body)
            assert r.status_code == 200 and r.content == b"RIFFDATA"
            with pytest.raises(StreamAborted):  # the server closes the connection mid-body
                await _post(app, "/v1/audio/speech", json={**body, "input": "fail"})
            with pytest.raises(StreamAborted):  # the whole file, also streamed through the gateway
                await _post(app, "/v1/audio/speech", json={**body, "input": "fail", "stream": False})
            assert _inflight(workers) == [0, 0, 0, 0]

    asyncio.run(main())


def test_transcript_stream_endings() -> None:
    async def main() -> None:
        async with _gateway() as (app, workers):
            def form(how: str) -> dict[str, Any]:
                return {"data": {"model": "asr", "stream": "true", "prompt": how}, "files": {"file": ("a.wav", b"RIFF")}}

            r = await _post(app, "/v1/audio/transcriptions", **form("ok"))
            assert _events(r.content) == [{"type": "transcript.text.delta", "delta": "Hello"},
                                          {"type": "transcript.text.done", "text": "Hello"}]
            for how in ("fail", "short"):  # the worker fails mid-way / ends before its final event
                events = _events((await _post(app, "/v1/audio/transcriptions", **form(how))).content)
                assert events[0]["type"] == "transcript.text.delta" and len(events) == 2
                assert events[1]["type"] == "error" and events[1]["error"]["code"] == "worker_lost"
            assert _inflight(workers) == [0, 0, 0, 0]

    asyncio.run(main())


def test_image_failures_are_error_statuses() -> None:
    async def main() -> None:
        async with _gateway() as (app, workers):
            r = await _post(app, "/v1/images/generations", json={"model": "img", "prompt": "refused", "size": "64x64"})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["type"] == "invalid_request_error" and "height" in r.json()["error"]["message"]
            r = await _post(app, "/v1/images/generations", json={"model": "img", "prompt": "broken", "size": "64x64"})
            assert r.status_code == 500, r.text
            assert r.json() == {"error": {"message": "image generation failed: RuntimeError", "type": "server_error",
                                          "param": None, "code": None}}
            assert _inflight(workers) == [0, 0, 0, 0]

    asyncio.run(main())


def test_image_job_cancelled_when_the_client_hangs_up() -> None:
    async def main() -> None:
        async with _gateway() as (app, workers):
            _Pipe.started.clear()
            body = json.dumps({"model": "img", "prompt": "slow", "size": "64x64"}).encode()
            client = _Client(body)
            call = asyncio.create_task(app(_scope("/v1/images/generations", body), client.receive, client.send))
            async with asyncio.timeout(10):
                while not _Pipe.started.is_set():
                    await asyncio.sleep(0.01)
            client.hang_up()
            async with asyncio.timeout(5):
                await call
            async with asyncio.timeout(5):  # the pipeline stopped at its next step: the worker is free
                while _inflight(workers) != [0, 0, 0, 0] or workers[2].runtime.backend._lock.locked():
                    await asyncio.sleep(0.01)
            assert client.status in (None, 499)

    asyncio.run(main())
