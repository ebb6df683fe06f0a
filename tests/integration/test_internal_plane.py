"""The internal plane with real processes: the secret ``serve`` makes when none is configured,
the worker's own request bounds, the controller's hidden docs, roles that refuse to listen
beyond loopback without a secret, and ``shutdown_timeout: 0``.

One server for the module, started with no secret anywhere (``GPT_SERVER_SECRET=""``); the
test reads the generated one from a worker process's environment, where ``serve`` puts it.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
import yaml

from tests.helpers import Proc, Server, base_config, free_port, smollm_entry

SECRET_HEADER = "X-GPT-Server-Secret"
NO_SECRET = {"GPT_SERVER_SECRET": ""}
NO_EOS = {"2": -100}


def _children(srv: Server) -> list[psutil.Process]:
    try:
        return psutil.Process(srv.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _worker_secret(srv: Server, timeout: float = 60) -> str | None:
    """GPT_SERVER_SECRET as the first worker process sees it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        srv.proc.check()
        for p in _children(srv):
            try:
                if "worker" in p.cmdline():
                    return p.environ().get("GPT_SERVER_SECRET") or None
            except psutil.Error:
                continue
        time.sleep(0.1)
    raise AssertionError(f"no worker process started:\n{srv.proc.log_text()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("plane")
    cfg = base_config()
    cfg["serve_args"]["max_body_bytes"] = 1024 * 1024  # the worker reads up to twice this
    cfg["serve_args"]["shutdown_timeout"] = 0
    srv = Server(cfg, tmp, "internal_plane", env=NO_SECRET)
    try:
        srv.secret = _worker_secret(srv)
        srv.wait_workers(timeout=180)
        yield srv
    finally:
        srv.stop()


def test_serve_generates_a_secret_for_its_internal_routes(server: Server) -> None:
    secret = server.secret
    assert secret is not None and len(secret) >= 32, "serve made no secret for its workers"
    ctrl = server.controller_url
    rogue = {"worker_id": "rogue", "address": "http://127.0.0.1:1", "model_name": "smollm2", "capacity": 1000000}
    r = httpx.post(f"{ctrl}/controller/register", json=rogue)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_secret", r.text
    assert httpx.get(f"{ctrl}/controller/workers").status_code == 401
    assert httpx.post(f"{ctrl}/controller/dispatch", json={"model": "smollm2"}).status_code == 401
    (w,) = server.workers()
    body = {"request_id": "x", "model": "smollm2", "kind": "completion", "prompts": ["hi"]}
    assert httpx.post(f"{w['address']}/worker/generate", json=body).status_code == 401
    assert httpx.get(f"{w['address']}/worker/info").status_code == 401
    # the secret is in no command line and in no log line
    children = _children(server)
    assert children
    for p in [psutil.Process(server.proc.pid), *children]:
        assert secret not in " ".join(p.cmdline()), p.cmdline()
    # the gateway still serves (it calls the worker with the secret)
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=60)
    out = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert out.choices[0].finish_reason in ("stop", "length")
    assert secret not in server.proc.log_text(10**7)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"n": 100000, "max_tokens": 1}, "n"),
        ({"max_tokens": 10**9}, "max_tokens"),
        ({"stop": [f"s{i}" for i in range(100)], "max_tokens": 1}, "stop"),
        ({"top_logprobs": 1000, "logprobs": True, "max_tokens": 1}, "top_logprobs"),
    ],
)
def test_worker_applies_the_gateway_bounds(server: Server, params: dict[str, Any], param: str) -> None:
    (w,) = server.workers()
    body = {"request_id": "b", "model": "smollm2", "kind": "completion", "prompts": ["hi"], "params": params}
    r = httpx.post(f"{w['address']}/worker/generate", json=body, headers=server.internal_headers(), timeout=30)
    assert r.status_code == 400, r.text[:300]
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and param in (err["param"] or ""), err


def test_worker_bounds_messages_prompts_and_body(server: Server) -> None:
    (w,) = server.workers()
    url, headers = f"{w['address']}/worker/generate", server.internal_headers()
    many = {"request_id": "m", "model": "smollm2", "kind": "chat", "messages": [{"role": "user", "content": "x"}] * 5000}
    assert httpx.post(url, json=many, headers=headers, timeout=30).status_code == 400
    prompts = {"request_id": "p", "model": "smollm2", "kind": "completion", "prompts": ["x"] * 64, "params": {"n": 4}}
    r = httpx.post(url, json=prompts, headers=headers, timeout=30)
    assert r.status_code == 400 and "prompts × n" in r.json()["error"]["message"], r.text[:300]
    big = b'{"request_id": "x", "model": "smollm2", "kind": "completion", "prompts": ["' + b"a" * (3 * 1024 * 1024) + b'"]}'
    r = httpx.post(url, content=big, headers={**headers, "content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # the worker still serves a request within the bounds
    ok = {"request_id": "ok", "model": "smollm2", "kind": "completion", "prompts": ["hi"], "params": {"max_tokens": 2}}
    r = httpx.post(url, json=ok, headers=headers, timeout=60)
    assert r.status_code == 200 and '"t":"finish"' in r.text.replace(" ", "")


def test_controller_docs_are_not_public(server: Server) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        r = httpx.get(f"{server.controller_url}{path}")
        assert r.status_code in (401, 404), (path, r.status_code)
        assert "openapi" not in r.text.lower()
        r = httpx.get(f"{server.controller_url}{path}", headers=server.internal_headers())
        assert r.status_code == 404, (path, r.status_code)
    (w,) = server.workers()
    for path in ("/docs", "/openapi.json"):
        assert httpx.get(f"{w['address']}{path}").status_code == 401
        assert httpx.get(f"{w['address']}{path}", headers=server.internal_headers()).status_code == 404


def test_shutdown_timeout_zero_does_not_wait(server: Server) -> None:
    """Last in the module: it stops the server. ``shutdown_timeout: 0`` cuts in-flight requests
    at once (uvicorn's None would have waited for them without end)."""
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 1500,
            "stream": True, "logit_bias": NO_EOS}
    got: dict[str, Any] = {"events": 0}

    def read() -> None:
        try:
            with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    got["events"] += line.startswith("data: ")
        except httpx.HTTPError as exc:
            got["error"] = type(exc).__name__

    t = threading.Thread(target=read)
    t.start()
    deadline = time.monotonic() + 30
    while got["events"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert got["events"] >= 3
    t0 = time.monotonic()
    server.proc.popen.send_signal(signal.SIGTERM)
    code = server.proc.popen.wait(60)
    took = time.monotonic() - t0
    t.join(30)
    assert took < 8, f"serve took {took:.1f}s to stop with shutdown_timeout 0"
    assert code == 0


# ---- roles started alone --------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpt_server.cli", *args], env={**os.environ, **NO_SECRET, **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.parametrize("role", ["controller", "worker"])
def test_role_alone_refuses_a_public_address_without_a_secret(role: str) -> None:
    port = free_port()
    r = _cli(role, "--host", "0.0.0.0", "--port", str(port))
    # a configuration error: exit 2, or a worker's own code for it (78, which its launcher does not restart)
    assert r.returncode == (78 if role == "worker" else 2), (r.returncode, r.stderr[-2000:])
    assert "controller_args.secret" in r.stderr and "GPT_SERVER_SECRET" in r.stderr, r.stderr[-2000:]
    assert "0.0.0.0" in r.stderr and "loading" not in r.stderr


def test_role_alone_with_a_secret_or_on_loopback_starts(tmp_path: Path) -> None:
    port = free_port("0.0.0.0")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"controller_args": {"host": "0.0.0.0", "port": port}}))
    p = subprocess.Popen(
        [sys.executable, "-m", "gpt_server.cli", "controller", "-c", str(cfg)],
        env={**os.environ, "GPT_SERVER_SECRET": "s3cret-s3cret"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/controller/health", timeout=2)
                break
            except httpx.HTTPError:
                assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.stderr else ""
                time.sleep(0.1)
        assert r.status_code == 401
        ok = httpx.get(f"http://127.0.0.1:{port}/controller/health", headers={SECRET_HEADER: "s3cret-s3cret"})
        assert ok.status_code == 200
    finally:
        p.terminate()
        p.wait(20)


# ---- TLS between hosts -----------------------------------------------------------------------


def _self_signed(tmp: Path) -> tuple[str, str]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=gpt-server-test", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    return str(cert), str(key)


def test_internal_tls_between_controller_worker_and_gateway(tmp_path: Path) -> None:
    """Controller, worker and gateway as separate processes, internal traffic over TLS with a
    self-signed certificate the peers are told to trust (``tls_ca``)."""
    cert, key = _self_signed(tmp_path)
    cfg = base_config(models=[smollm_entry()])
    cport = cfg["controller_args"]["port"]
    cfg["controller_args"].update({"tls_cert": cert, "tls_key": key, "tls_ca": cert, "secret": "tls-s3cret"})
    cfg["model_worker_args"]["controller_address"] = f"https://127.0.0.1:{cport}"
    path = tmp_path / "tls.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ctrl = f"https://127.0.0.1:{cport}"
    trust = ssl.create_default_context(cafile=cert)
    auth = {SECRET_HEADER: "tls-s3cret"}
    procs = [Proc(["controller", "-c", str(path)], "tls_controller")]
    try:
        procs.append(Proc(["worker", "-c", str(path)], "tls_worker"))
        procs.append(Proc(["gateway", "-c", str(path)], "tls_gateway"))
        deadline = time.monotonic() + 120
        ws: list = []
        while time.monotonic() < deadline and not ws:
            try:
                ws = httpx.get(f"{ctrl}/controller/workers", headers=auth, verify=trust, timeout=2).json()
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert ws, procs[1].log_text()
        assert ws[0]["address"].startswith("https://127.0.0.1:")
        # the listeners speak only TLS, and only to a client that trusts the certificate
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{cport}/controller/health", headers=auth, timeout=5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{ctrl}/controller/health", headers=auth, timeout=5)  # system CAs: not trusted
        assert httpx.get(f"{ws[0]['address']}/worker/health", headers=auth, verify=trust, timeout=5).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(ws[0]["address"].replace("https://", "http://") + "/worker/health", headers=auth, timeout=5)
        # chat through the gateway: gateway → controller and gateway → worker over TLS
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{cfg['serve_args']['port']}/v1", api_key="x", max_retries=0, timeout=60)
        deadline = time.monotonic() + 30
        while True:
            try:
                out = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
                break
            except (openai.APIConnectionError, openai.NotFoundError, openai.InternalServerError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        assert out.choices[0].finish_reason in ("stop", "length")
    finally:
        for p in reversed(procs):
            p.stop()
