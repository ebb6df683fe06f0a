"""The internal plane (controller routes, worker routes): the one place that says where a role
may listen without a secret, makes the secret ``serve`` hands its own parts, and turns the TLS
settings into server options and client verification."""

from __future__ import annotations

import ipaddress
import secrets
import ssl
from dataclasses import dataclass
from functools import cached_property

from ..settings import ConfigError

__all__ = [
    "SECRET_ENV", "SECRET_SETTING", "is_loopback", "connect_host", "new_secret", "require_secret_off_loopback", "InternalTLS",
]

SECRET_ENV = "GPT_SERVER_SECRET"
SECRET_SETTING = f"controller_args.secret (or ${SECRET_ENV})"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches: 127.0.0.0/8, ::1, localhost (and the
    names under it, RFC 6761)."""
    h = host.strip().strip("[]").lower()
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def connect_host(host: str) -> str:
    """The host this machine dials to reach a listener bound to ``host`` (0.0.0.0 → 127.0.0.1)."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def new_secret() -> str:
    """A fresh internal secret (``serve`` makes one per start when none is configured)."""
    return secrets.token_urlsafe(32)


def require_secret_off_loopback(role: str, host: str, secret: str | None) -> None:
    """Refuse, before anything binds, to serve internal routes beyond loopback without a secret:
    anyone who reaches them could register a worker or call a model directly."""
    if secret or is_loopback(host):
        return
    where = host or "all addresses"
    raise ConfigError(
        f"{role}: refusing to listen on {where} without an internal secret: anyone who reaches it could "
        f"register workers or call models. Set {SECRET_SETTING} on every host, or bind a loopback address (127.0.0.1)"
    )


@dataclass(frozen=True)
class InternalTLS:
    """TLS for controller and worker listeners (``certfile``/``keyfile``) and the CA bundle the
    gateway and workers verify them against (``cafile``; the system's when None)."""

    certfile: str | None = None
    keyfile: str | None = None
    cafile: str | None = None

    @property
    def scheme(self) -> str:
        """The scheme of the addresses of this host's controller and workers."""
        return "https" if self.certfile else "http"

    def url(self, host: str, port: int) -> str:
        """The base URL of a listener of this host (IPv6 in brackets)."""
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{port}"

    @cached_property
    def client_context(self) -> ssl.SSLContext:
        """What an internal client verifies an https:// peer with (hostname included)."""
        return ssl.create_default_context(cafile=self.cafile)
