"""Safe media fetching (gpt_server.chat.media) against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gpt_server.chat.media import (
    MediaFetcher,
    MediaPolicy,
    check_host,
    decode_data_url,
    forbidden_address,
)
from gpt_server.errors import BadRequestError
from tests.media_helpers import SlowLoris


def fetch_media(url: str, policy: MediaPolicy) -> tuple[bytes, str]:
    fetcher = MediaFetcher(policy)
    try:
        return asyncio.run(fetcher.fetch(url))
    finally:
        fetcher.close()

BODY = b"\x89PNG" + bytes(range(256)) * 8


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/img":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/img")
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path == "/slow":
            self.send_response(200)
            self.end_headers()
            for _ in range(20):
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


ALLOW = MediaPolicy(allow_private=True, timeout=5)


def test_fetch_and_redirect_when_private_allowed(base: str) -> None:
    assert fetch_media(f"{base}/img", ALLOW) == (BODY, "image/png")
    assert fetch_media(f"{base}/redirect", ALLOW)[0] == BODY
    # the Host header keeps the name the URL gave, while the connection goes to the checked address
    assert fetch_media(base.replace("127.0.0.1", "localhost") + "/img", ALLOW)[0] == BODY


@pytest.mark.parametrize("path", ["/img", "/redirect"])
def test_private_refused_by_default(base: str, path: str) -> None:
    with pytest.raises(BadRequestError, match="non-public"):
        fetch_media(f"{base}{path}", MediaPolicy())


@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "0.0.0.0", "::1", "::ffff:127.0.0.1", "fe80::1", "localhost"])
def test_check_host_refuses_non_public(host: str) -> None:
    with pytest.raises(BadRequestError):
        check_host(host, 80, allow_private=False)
    assert check_host(host, 80, allow_private=True)


def test_limits(base: str) -> None:
    with pytest.raises(BadRequestError, match="larger than"):
        fetch_media(f"{base}/img", MediaPolicy(allow_private=True, max_bytes=1024))
    with pytest.raises(BadRequestError, match="longer than|cannot fetch"):
        fetch_media(f"{base}/slow", MediaPolicy(allow_private=True, timeout=0.5))
    with pytest.raises(BadRequestError, match="too many redirects"):
        fetch_media(f"{base}/loop", ALLOW)
    with pytest.raises(BadRequestError, match="HTTP 404"):
        fetch_media(f"{base}/missing", ALLOW)
    with pytest.raises(BadRequestError, match="data:, http: or https:"):
        fetch_media("file:///etc/passwd", ALLOW)


# IPv4 addresses inside IPv6 ones: 6to4, NAT64 (well-known and local-use), mapped, compatible, Teredo
@pytest.mark.parametrize(
    "addr",
    ["2002:7f00:1::", "2002:a9fe:a9fe::1", "2002:c0a8:101::", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::a00:1",
     "64:ff9b:1::808:808", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::127.0.0.1", "::8.8.8.8",
     "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::1", "fec0::1", "fc00::1", "fe80::1", "::1", "::"],
)
def test_embedded_private_ipv4_refused(addr: str) -> None:
    assert forbidden_address(ipaddress.ip_address(addr))
    with pytest.raises(BadRequestError, match="non-public"):
        check_host(addr, 80, allow_private=False)


@pytest.mark.parametrize("addr", ["8.8.8.8", "2002:808:808::", "64:ff9b::808:808", "::ffff:8.8.8.8", "2606:4700::1111"])
def test_public_addresses_allowed(addr: str) -> None:
    assert not forbidden_address(ipaddress.ip_address(addr))


def test_one_deadline_for_the_whole_fetch() -> None:
    """Headers trickling in (each byte within the read timeout) cannot stretch a fetch past its deadline."""
    loris = SlowLoris()
    try:
        t0 = time.monotonic()
        with pytest.raises(BadRequestError, match="longer than 1 s"):
            fetch_media(loris.url, MediaPolicy(allow_private=True, timeout=1))
        assert time.monotonic() - t0 < 2.5
    finally:
        loris.close()


def test_data_urls() -> None:
    url = "data:image/png;base64," + base64.b64encode(BODY).decode()
    assert decode_data_url(url, 10_000) == (BODY, "image/png")
    assert fetch_media(url, MediaPolicy()) == (BODY, "image/png")
    with pytest.raises(BadRequestError):
        decode_data_url(url, 100)
    with pytest.raises(BadRequestError):
        decode_data_url("data:image/png;base64,@@@", 100)
    with pytest.raises(BadRequestError):
        decode_data_url("data:nocomma", 100)
