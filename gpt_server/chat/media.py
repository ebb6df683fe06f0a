"""Safe fetching of media given by URL in requests (``data:`` URLs and http(s) URLs).

Remote fetches are bounded: a size cap, one wall-clock deadline for the whole fetch (name
lookup, connect, headers, body and every redirect hop — a server that trickles its headers
cannot hold a fetch past it), a few redirects, and a few fetches at a time per process
(``MediaFetcher``'s own slots and name-lookup threads, so stalled fetches never starve other
work). They refuse private, loopback, link-local, multicast and reserved addresses —
including IPv4 addresses embedded in IPv6 ones (mapped, compatible, 6to4, NAT64, Teredo) —
checked for every address the host name resolves to, at every redirect hop, unless the
deployment allows them. The connection is made to the address that was checked (no second
DNS lookup), so a host name cannot be re-pointed at an internal address between the check
and the fetch.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import httpx

from ..errors import BadRequestError

__all__ = ["MediaPolicy", "MediaFetcher", "decode_data_url", "check_host", "forbidden_address"]

_MAX_REDIRECTS = 5
_DNS_THREADS = 4

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class MediaPolicy:
    max_bytes: int = 20 * 1024 * 1024
    timeout: float = 10.0  # one deadline for the whole fetch of one URL
    allow_private: bool = False
    max_image_pixels: int = 24_000_000  # one image, from its header, before decoding
    max_request_pixels: int = 40_000_000  # all images of one request
    max_concurrent_fetches: int = 8  # remote fetches at once per process; the others wait (within their deadline)


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


# IPv6 ranges that carry an IPv4 address in their low 32 bits: the IPv4 one decides
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# refused outright: IPv4-compatible (deprecated), local-use NAT64, Teredo tunnels, site-local
_REFUSED6 = (
    ipaddress.IPv6Network("::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("2001::/32"),
    ipaddress.IPv6Network("fec0::/10"),
)


def _forbidden_v4(ip: ipaddress.IPv4Address) -> bool:
    return (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
        or ip.is_reserved or ip.is_unspecified or not ip.is_global
    )


def forbidden_address(ip: IPAddress) -> bool:
    """Whether a media fetch may not connect to ``ip`` (unless private addresses are allowed)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _forbidden_v4(ip)
    if ip.ipv4_mapped is not None:
        return _forbidden_v4(ip.ipv4_mapped)
    if ip in _NAT64:
        return _forbidden_v4(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None and _forbidden_v4(ip.sixtofour):
        return True
    if any(ip in net for net in _REFUSED6):
        return True
    return (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_site_local
        or ip.is_reserved or ip.is_unspecified or not ip.is_global
    )


def check_host(host: str, port: int, allow_private: bool, param: str = "messages") -> str:
    """Resolve ``host``; every address must be public (unless allowed). Returns one address. Blocking."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise _bad(f"cannot resolve media host '{host}': {exc}", param) from exc
    addrs = [str(info[4][0]) for info in infos]
    if not addrs:
        raise _bad(f"cannot resolve media host '{host}'", param)
    if not allow_private:
        for a in addrs:
            if forbidden_address(ipaddress.ip_address(a.split("%")[0])):
                raise _bad(f"media URL host '{host}' resolves to a non-public address, which is not allowed", param)
    return addrs[0]


class MediaFetcher:
    """Fetches media URLs under one ``MediaPolicy``; one per backend, used from its event loop."""

    def __init__(self, policy: MediaPolicy) -> None:
        self.policy = policy
        self._dns = ThreadPoolExecutor(_DNS_THREADS, thread_name_prefix="media-dns")
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ssl: ssl.SSLContext | None = None

    def close(self) -> None:
        self._dns.shutdown(wait=False, cancel_futures=True)

    def _slot(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:
            self._slots, self._loop = asyncio.Semaphore(self.policy.max_concurrent_fetches), loop
        return self._slots

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            try:
                import certifi

                self._ssl = ssl.create_default_context(cafile=certifi.where())
            except ImportError:
                self._ssl = ssl.create_default_context()
        return self._ssl

    async def fetch(self, url: str, param: str = "messages") -> tuple[bytes, str]:
        """(bytes, media type) of a data: or http(s) URL, within the policy."""
        p = self.policy
        if url.startswith("data:"):
            if len(url) < 256 * 1024:
                return decode_data_url(url, p.max_bytes, param)
            return await asyncio.to_thread(decode_data_url, url, p.max_bytes, param)
        try:
            async with asyncio.timeout(p.timeout):
                async with self._slot():
                    return await self._fetch_remote(url, param)
        except TimeoutError:
            raise _bad(f"fetching the media URL took longer than {p.timeout:g} s", param) from None

    async def _pinned_request(self, url: str, param: str) -> httpx.Request:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _bad("media URLs must be data:, http: or https: URLs", param)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise _bad(f"bad port in the media URL: {exc}", param) from exc
        loop = asyncio.get_running_loop()
        addr = await loop.run_in_executor(self._dns, check_host, parts.hostname, port, self.policy.allow_private, param)
        host_header = parts.netloc.rpartition("@")[2]
        ext = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
        ip_host = f"[{addr}]" if ":" in addr else addr
        pinned = parts._replace(netloc=f"{ip_host}:{port}").geturl()
        return httpx.Request("GET", pinned, headers={"Host": host_header}, extensions=ext)

    async def _read_capped(self, resp: httpx.Response, param: str) -> tuple[bytes, str]:
        max_bytes = self.policy.max_bytes
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise _bad(f"media larger than {max_bytes} bytes", param)
        body = bytearray()
        async for chunk in resp.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise _bad(f"media larger than {max_bytes} bytes", param)
        return bytes(body), resp.headers.get("content-type", "").split(";")[0]

    async def _fetch_remote(self, url: str, param: str) -> tuple[bytes, str]:
        p = self.policy
        async with httpx.AsyncClient(
            timeout=p.timeout, follow_redirects=False, trust_env=False, verify=self._ssl_context()
        ) as client:
            for _ in range(_MAX_REDIRECTS + 1):
                req = await self._pinned_request(url, param)
                try:
                    resp = await client.send(req, stream=True)
                except httpx.HTTPError as exc:
                    raise _bad(f"cannot fetch the media URL: {exc}", param) from exc
                try:
                    if resp.is_redirect and "location" in resp.headers:
                        url = urljoin(url, resp.headers["location"])
                        continue
                    if resp.status_code != 200:
                        raise _bad(f"fetching the media URL gave HTTP {resp.status_code}", param)
                    return await self._read_capped(resp, param)
                except httpx.HTTPError as exc:
                    raise _bad(f"cannot fetch the media URL: {exc}", param) from exc
                finally:
                    await resp.aclose()
        raise _bad("too many redirects fetching the media URL", param)
