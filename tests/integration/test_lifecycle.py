"""A request's life at the gateway, with real processes: a client that hangs up stops the
work behind it (streamed or not), large JSON bodies do not stall other streams and have a
limit of their own, a loopback server refuses foreign Host names and non-JSON bodies (a web
page cannot drive it), request_timeout is one deadline across dispatch and retries, and a
stream still running at the shutdown drain deadline ends with an error event and [DONE]."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gpt_server.protocol.worker import PROTOCOL_VERSION
from tests.helpers import Server, base_config, served, smollm_entry

LONG = {"role": "user", "content": "Write a very long story about the sea."}
NO_EOS = {"2": -100}  # SmolLM2's end-of-turn token: generation runs to max_tokens
JSON_LIMIT = 20 * 1024 * 1024
UPLOAD_LIMIT = 64 * 1024 * 1024
TIMEOUT = 5.0  # request_timeout of the second server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cfg = base_config(models=[smollm_entry(n_parallel=4)])
    cfg["serve_args"].update(max_body_bytes=UPLOAD_LIMIT, max_json_body_bytes=JSON_LIMIT, allowed_hosts=["gpt.example.internal"])
    with served(cfg, tmp_path_factory.mktemp("lifecycle"), "lifecycle", 1) as srv:
        yield srv


def _inflight(srv: Server) -> int:
    return int(httpx.get(f"{srv.workers()[0]['address']}/worker/info", headers=srv.internal_headers(), timeout=5).json()["inflight"])


# ---- a hang-up stops the work, streamed or not ---------------------------------------


def test_hang_up_stops_non_stream_generation(server: Server) -> None:
    """4 non-streamed requests of 1500 tokens, abandoned after 0.7 s: the engine is free
    within seconds, not when the 6000 tokens are done."""
    chat = {"model": "smollm2", "messages": [LONG], "max_tokens": 1500, "logit_bias": NO_EOS}
    completion = {"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 1500, "logit_bias": NO_EOS}
    calls = [("/v1/chat/completions", chat), ("/v1/completions", completion)] * 2
    timed_out: list[bool] = []

    def call(path: str, body: dict[str, Any]) -> None:
        try:
            httpx.post(f"{server.base_url}{path}", json=body, timeout=httpx.Timeout(30, read=0.7))
        except httpx.ReadTimeout:
            timed_out.append(True)  # the client gives up and closes its connection

    threads = [threading.Thread(target=call, args=c) for c in calls]
    for t in threads:
        t.start()
    busy = 0
    while any(t.is_alive() for t in threads):
        busy = max(busy, _inflight(server))
        time.sleep(0.05)
    hung_up = time.monotonic()
    assert len(timed_out) == 4 and busy >= 1, (timed_out, busy)
    while _inflight(server) and time.monotonic() - hung_up < 10:
        time.sleep(0.05)
    freed_after = time.monotonic() - hung_up
    print(f"engine free {freed_after:.2f}s after the hang-ups (in flight before: {busy})")
    assert _inflight(server) == 0 and freed_after < 3, f"still generating {freed_after:.1f}s after the clients left"


# ---- large JSON bodies -----------------------------------------------------------------


def _many_parts_body(mib: float) -> bytes:
    """A chat body of many small content parts: the costliest JSON to validate per byte."""
    part = {"type": "text", "text": "y" * 100}
    per_message = 90
    messages = int(mib * 1024 * 1024 / (per_message * 125))
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": [part] * per_message}] * messages}
    return json.dumps(body).encode()


def test_large_json_body_does_not_stall_streams(server: Server) -> None:
    """While a stream runs, an 18 MiB body is validated: the stream's longest silence stays short."""
    big = _many_parts_body(18)
    arrivals: list[float] = []
    body = {"model": "smollm2", "messages": [LONG], "max_tokens": 600, "stream": True, "logit_bias": NO_EOS}

    def stream() -> None:
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.monotonic())

    t = threading.Thread(target=stream)
    t.start()
    while len(arrivals) < 20 and t.is_alive():
        time.sleep(0.02)
    sent = time.monotonic()
    r = httpx.post(f"{server.base_url}/v1/chat/completions", content=big, headers={"content-type": "application/json"}, timeout=60)
    answered = time.monotonic()
    time.sleep(0.5)
    still_streaming = t.is_alive()
    t.join(120)
    assert r.status_code == 400 and "content parts" in r.json()["error"]["message"], r.text[:300]  # parsed, then bounded
    assert still_streaming, "the stream must outlast the large body"
    window = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False) if b > sent and a < answered + 0.2]
    before = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False) if b < sent]
    worst = max(window)
    print(f"{len(big) / 2**20:.1f} MiB answered in {answered - sent:.2f}s; longest stream gap {worst * 1000:.0f} ms "
          f"(before it: {max(before) * 1000:.0f} ms)")
    assert worst < 0.5, f"the stream stalled {worst:.2f}s while the body was parsed"


def test_json_limit_413_while_uploads_keep_the_larger_limit(server: Server) -> None:
    url = f"{server.base_url}/v1/chat/completions"
    over = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "x" * (JSON_LIMIT + 1024)}]})
    r = httpx.post(url, content=over, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413, r.text[:300]
    err = r.json()["error"]
    assert err["code"] == "request_too_large" and err["type"] == "invalid_request_error" and str(JSON_LIMIT) in err["message"]
    # an upload above the JSON limit (under the upload limit) reaches its route
    audio = b"RIFF" + b"\0" * (JSON_LIMIT + 2 * 1024 * 1024)
    r = httpx.post(
        f"{server.base_url}/v1/audio/transcriptions", files={"file": ("a.wav", audio, "audio/wav")},
        data={"model": "smollm2"}, timeout=60,
    )
    assert r.status_code != 413 and r.status_code < 500, r.text[:300]
    assert r.json()["error"]["param"] == "model", r.text[:300]  # the route answered: smollm2 does not transcribe


# ---- a web page cannot drive a loopback server -------------------------------------------


def test_foreign_host_names_are_refused(server: Server) -> None:
    port = server.port
    r = httpx.get(f"{server.base_url}/v1/models", headers={"Host": f"evil.example:{port}"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_host" and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": "smollm2", "messages": [LONG]}, headers={"Host": "evil.example"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "gpt.example.internal", f"GPT.example.internal.:{port}"):
        assert httpx.get(f"{server.base_url}/v1/models", headers={"Host": host}).status_code == 200, host
    assert httpx.get(f"{server.base_url}/ui", follow_redirects=True).status_code == 200
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none")
    assert client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=2).choices


def test_non_json_bodies_are_refused_on_json_routes(server: Server) -> None:
    url = f"{server.base_url}/v1/chat/completions"
    raw = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    for ctype in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded"):  # a page's simple requests
        r = httpx.post(url, content=raw, headers={"content-type": ctype, "Origin": "http://evil.example"})
        assert r.status_code == 415, (ctype, r.text)
        assert r.json()["error"]["code"] == "unsupported_media_type", r.text
    r = httpx.post(f"{server.base_url}/v1/embeddings", content=raw, headers={"content-type": "text/plain"})
    assert r.status_code == 415, r.text
    # a browser's body without a type (a Blob) carries an Origin: refused; a script's without one: taken
    assert httpx.post(url, content=raw, headers={"Origin": "http://evil.example"}).status_code == 415
    assert httpx.post(url, content=raw).status_code == 200
    assert httpx.post(url, content=raw, headers={"content-type": "application/json; charset=utf-8"}).status_code == 200


# ---- request_timeout is one deadline; the drain deadline ends streams cleanly ---------------


class _SilentWorker:
    """A TCP server that accepts connections and never answers: a hung worker."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.conns: list[socket.socket] = []
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while self.running:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                continue

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        for c in [*self.conns, self.sock]:
            c.close()


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, list[_SilentWorker]]]:
    """request_timeout 5 s, 2 retries, a 1 s drain; three hung chat workers and one hung embedder."""
    cfg = base_config(models=[smollm_entry(n_parallel=2)])
    cfg["serve_args"].update(request_timeout=TIMEOUT, max_retries=2, shutdown_timeout=1)
    silent = [_SilentWorker() for _ in range(4)]
    try:
        with served(cfg, tmp_path_factory.mktemp("tight"), "lifecycle_tight", 1) as srv:
            for i, w in enumerate(silent):
                embed = i == 3
                info = {
                    "worker_id": f"silent-{i}", "address": w.address, "model_name": "silent-embed" if embed else "silent",
                    "model_kind": "embedding" if embed else "auto", "capabilities": ["embed"] if embed else ["chat", "completion"],
                    "capacity": 4, "heartbeat_interval": 600, "protocol_version": PROTOCOL_VERSION,
                }
                assert httpx.post(f"{srv.controller_url}/controller/register", json=info, headers=srv.internal_headers()).status_code == 200
            yield srv, silent
    finally:
        for w in silent:
            w.close()


def test_request_timeout_is_one_deadline_across_retries(tight: tuple[Server, list[_SilentWorker]]) -> None:
    """Three replicas that never answer: a 504 at request_timeout, not one timeout per retry."""
    srv, _ = tight
    cases = [
        ("/v1/chat/completions", {"model": "silent", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
        ("/v1/chat/completions", {"model": "silent", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}),
        ("/v1/embeddings", {"model": "silent-embed", "input": "hi"}),
    ]
    for path, body in cases:
        t0 = time.monotonic()
        r = httpx.post(f"{srv.base_url}{path}", json=body, timeout=60)
        took = time.monotonic() - t0
        print(f"{path} stream={body.get('stream', False)}: {r.status_code} after {took:.1f}s")
        assert r.status_code == 504, (path, r.status_code, r.text, took)
        assert r.json()["error"]["code"] == "timeout" and r.json()["error"]["type"] == "timeout_error"
        assert TIMEOUT - 0.5 < took < TIMEOUT + 2, (path, took)


def test_stream_cut_by_the_drain_deadline_ends_with_error_and_done(tight: tuple[Server, list[_SilentWorker]]) -> None:
    """SIGTERM with a 1 s drain while a long stream runs: the stream ends with an error event
    (server_shutdown) and [DONE], not a dropped connection. Stops the module's server: runs last."""
    srv, _ = tight
    body = {"model": "smollm2", "messages": [LONG], "max_tokens": 1500, "stream": True, "logit_bias": NO_EOS}
    events: list[str] = []
    outcome: dict[str, Any] = {}
    with httpx.stream("POST", f"{srv.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        try:
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if len(events) == 3:
                    srv.proc.popen.send_signal(signal.SIGTERM)
                    outcome["sigterm"] = time.monotonic()
        except httpx.HTTPError as exc:
            outcome["cut"] = repr(exc)
    ended = time.monotonic() - outcome["sigterm"]
    print(f"stream ended {ended:.2f}s after SIGTERM; last events: {events[-2:]}; {outcome.get('cut', '')}")
    assert "cut" not in outcome, outcome
    assert events[-1] == "[DONE]", events[-3:]
    err = json.loads(events[-2])["error"]
    assert err["code"] == "server_shutdown" and err["type"] == "server_error", err
    assert ended < 5, ended
    assert srv.proc.popen.wait(60) == 0
