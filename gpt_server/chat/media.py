"""Safe fetching of media given by URL in requests (``data:`` URLs and http(s) URLs).

Remote fetches are bounded (size cap, total timeout, a few redirects) and refuse private,
loopback, link-local, multicast and reserved addresses — checked for every address the
host name resolves to, at every redirect hop — unless the deployment allows them.
The connection is made to the address that was checked (no second DNS lookup), so a
host name cannot be re-pointed at an internal address between the check and the fetch.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import httpx

from ..errors import BadRequestError

__all__ = ["MediaPolicy", "fetch_media", "decode_data_url", "check_host"]

_MAX_REDIRECTS = 5


@dataclass(frozen=True)
class MediaPolicy:
    max_bytes: int = 20 * 1024 * 1024
    timeout: float = 10.0
    allow_private: bool = False


def _bad(message: str, param: str) -> BadRequestError:
    return BadRequestError(message, param=param, code="invalid_media_url")


def decode_data_url(url: str, max_bytes: int, param: str = "messages") -> tuple[bytes, str]:
    """(bytes, media type) of a ``data:`` URL."""
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise _bad("malformed data: URL", param)
    media_type = header.split(";")[0] or "text/plain"
    if len(payload) > max_bytes * 4 // 3 + 8:
        raise _bad(f"media larger than {max_bytes} bytes", param)
    try:
        data = base64.b64decode(payload, validate=True) if header.endswith(";base64") else unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        raise _bad(f"data: URL is not valid base64: {exc}", param) from exc
    if len(data) > max_bytes:
        raise _bad(f"media larger than {max_bytes} bytes", param)
    return data, media_type


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
        or ip.is_reserved or ip.is_unspecified or not ip.is_global
    )


def check_host(host: str, port: int, allow_private: bool, param: str = "messages") -> str:
    """Resolve ``host``; every address must be public (unless allowed). Returns one address."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise _bad(f"cannot resolve media host '{host}': {exc}", param) from exc
    addrs = [str(info[4][0]) for info in infos]
    if not addrs:
        raise _bad(f"cannot resolve media host '{host}'", param)
    if not allow_private:
        for a in addrs:
            if _forbidden(ipaddress.ip_address(a.split("%")[0])):
                raise _bad(f"media URL host '{host}' resolves to a non-public address, which is not allowed", param)
    return addrs[0]


def _pinned_request(url: str, allow_private: bool, param: str) -> httpx.Request:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad("media URLs must be data:, http: or https: URLs", param)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addr = check_host(parts.hostname, port, allow_private, param)
    host_header = parts.netloc.rpartition("@")[2]
    ext = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    ip_host = f"[{addr}]" if ":" in addr else addr
    pinned = parts._replace(netloc=f"{ip_host}:{port}").geturl()
    return httpx.Request("GET", pinned, headers={"Host": host_header}, extensions=ext)


def _read_capped(resp: httpx.Response, policy: MediaPolicy, deadline: float, param: str) -> tuple[bytes, str]:
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise _bad(f"media larger than {policy.max_bytes} bytes", param)
    body = bytearray()
    for chunk in resp.iter_bytes():
        body += chunk
        if len(body) > policy.max_bytes:
            raise _bad(f"media larger than {policy.max_bytes} bytes", param)
        if time.monotonic() > deadline:
            raise _bad("fetching the media URL timed out", param)
    return bytes(body), resp.headers.get("content-type", "").split(";")[0]


def fetch_media(url: str, policy: MediaPolicy, param: str = "messages") -> tuple[bytes, str]:
    """(bytes, media type) of a data: or http(s) URL, within the policy. Blocking."""
    if url.startswith("data:"):
        return decode_data_url(url, policy.max_bytes, param)
    deadline = time.monotonic() + policy.timeout
    with httpx.Client(timeout=policy.timeout, follow_redirects=False, trust_env=False) as client:
        for _ in range(_MAX_REDIRECTS + 1):
            req = _pinned_request(url, policy.allow_private, param)
            try:
                resp = client.send(req, stream=True)
            except httpx.HTTPError as exc:
                raise _bad(f"cannot fetch the media URL: {exc}", param) from exc
            try:
                if resp.is_redirect and "location" in resp.headers:
                    url = urljoin(url, resp.headers["location"])
                    continue
                if resp.status_code != 200:
                    raise _bad(f"fetching the media URL gave HTTP {resp.status_code}", param)
                return _read_capped(resp, policy, deadline, param)
            except httpx.HTTPError as exc:
                raise _bad(f"cannot fetch the media URL: {exc}", param) from exc
            finally:
                resp.close()
    raise _bad("too many redirects fetching the media URL", param)
