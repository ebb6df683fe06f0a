"""HTTP client of a Triton server: the ``generate_stream`` extension and the readiness API.

A client hang-up closes the upstream stream, which Triton turns into a cancellation of the
request (a Python-backend model sees ``request.is_cancelled()``). Errors come back as our
``GatewayError`` tree: Triton unreachable or the model not ready → 503, Triton refusing the
inputs → 400 with its message, anything else → 502.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from ...errors import BadRequestError, GatewayError, ServiceUnavailableError, UpstreamError
from ..http_client import LoopBoundClient

__all__ = ["TritonClient", "HealthWatch", "normalise_url"]

log = logging.getLogger(__name__)

_MAX_LINE = 16 * 1024 * 1024  # one streamed response; a longer line is a broken stream


def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def _message(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return raw[:500].decode("utf-8", errors="replace")
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])[:2000]
    return str(data)[:500]


def _status_error(status: int, raw: bytes) -> GatewayError:
    msg = _message(raw)
    if status == 400:
        return BadRequestError(f"Triton refused the request: {msg}", code="triton_bad_request")
    if status in (404, 503):  # model not loaded / server not ready
        return ServiceUnavailableError(f"the Triton model is not available: {msg}", code="triton_unavailable")
    return UpstreamError(f"Triton answered HTTP {status}: {msg}", code="triton_error")


class TritonClient:
    """One ``httpx.AsyncClient`` per event loop (made on first use) for one Triton model."""

    def __init__(self, base_url: str, model: str, version: str, timeout: float) -> None:
        self.base_url = normalise_url(base_url)
        self.model = model
        self.model_path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
        self._conn = LoopBoundClient(self.base_url, httpx.Timeout(connect=5.0, read=timeout, write=60.0, pool=None))
        self.on_unreachable: list[Any] = []  # callbacks when a request finds Triton down

    def _http(self) -> httpx.AsyncClient:
        return self._conn.get()

    def close(self) -> None:
        """Close from any thread (the worker calls backend.close in a thread)."""
        self._conn.close()

    def _unreachable(self, exc: Exception) -> GatewayError:
        log.warning("Triton at %s is unreachable: %s: %s", self.base_url, type(exc).__name__, exc)
        for cb in self.on_unreachable:
            cb()
        return ServiceUnavailableError("the Triton server is unreachable", code="triton_unreachable")

    async def generate_stream(self, inputs: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """Triton's responses to one request, in order; leaving early closes the stream."""
        got = 0
        try:
            async with self._http().stream("POST", f"{self.model_path}/generate_stream", json=inputs) as resp:
                if resp.status_code != 200:
                    raise _status_error(resp.status_code, await resp.aread())
                async for line in resp.aiter_lines():
                    if len(line) > _MAX_LINE:
                        raise UpstreamError("Triton sent an over-long stream line", code="triton_error")
                    if not line.startswith("data:"):
                        continue
                    try:
                        obj = json.loads(line[5:])
                    except ValueError:
                        raise UpstreamError("Triton sent an unreadable stream event", code="triton_error") from None
                    if not isinstance(obj, dict):
                        raise UpstreamError("Triton sent an unreadable stream event", code="triton_error")
                    if "error" in obj:
                        raise UpstreamError(f"Triton failed the request: {str(obj['error'])[:2000]}", code="triton_error")
                    got += 1
                    yield obj
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._unreachable(exc) from None
        except httpx.TimeoutException as exc:
            raise UpstreamError(f"Triton went silent ({type(exc).__name__})", code="triton_timeout") from None
        except httpx.HTTPError as exc:
            if got == 0:
                raise self._unreachable(exc) from None
            raise UpstreamError(f"lost the connection to Triton mid-stream ({type(exc).__name__})", code="triton_error") from None

    def ready(self, timeout: float = 5.0) -> str | None:
        """None when the server and the model are ready, else why not (blocking: call in a thread)."""
        try:
            with httpx.Client(base_url=self.base_url, timeout=timeout) as c:
                r = c.get("/v2/health/ready")
                if r.status_code != 200:
                    return f"Triton is not ready (HTTP {r.status_code})"
                r = c.get(f"{self.model_path}/ready")
                if r.status_code != 200:
                    return f"Triton model '{self.model}' is not ready (HTTP {r.status_code})"
        except httpx.HTTPError as exc:
            return f"Triton is unreachable ({type(exc).__name__})"
        return None


class HealthWatch:
    """Polls Triton's readiness API from a daemon thread; ``ok`` is what the worker reports."""

    def __init__(self, client: TritonClient, interval: float) -> None:
        self.client = client
        self.interval = interval
        self.reason: str | None = "not checked yet"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="triton-health", daemon=True)
        client.on_unreachable.append(self.mark_down)

    @property
    def ok(self) -> bool:
        return self.reason is None

    def mark_down(self) -> None:
        self.reason = "the Triton server is unreachable"

    def check(self) -> None:
        reason = self.client.ready(timeout=min(5.0, max(self.interval, 1.0)))
        if reason != self.reason:
            log.info("Triton at %s: %s", self.client.base_url, reason or "ready")
        self.reason = reason

    def start(self) -> None:
        self.check()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def stop(self) -> None:
        self._stop.set()
