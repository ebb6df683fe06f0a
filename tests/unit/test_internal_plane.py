"""The internal plane's shared checks: which hosts count as loopback, the refusal that names the
setting, the TLS pair in the config."""

from __future__ import annotations

import pytest

from gpt_server.config import ConfigError, parse_config
from gpt_server.web.internal import InternalTLS, is_loopback, require_secret_off_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)
    require_secret_off_loopback("gpt-server controller", host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.5", "192.168.1.2", "example.com", "128.0.0.1"])
def test_other_hosts_need_a_secret(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ConfigError, match=r"controller_args\.secret \(or \$GPT_SERVER_SECRET\)"):
        require_secret_off_loopback("gpt-server worker", host, None)
    require_secret_off_loopback("gpt-server worker", host, "s")


def test_tls_settings() -> None:
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        parse_config({"controller_args": {"tls_cert": "c.pem"}, "models": []})
    cfg = parse_config({"controller_args": {"tls_cert": "c.pem", "tls_key": "k.pem"}, "models": []})
    assert cfg.internal_tls() == InternalTLS("c.pem", "k.pem", None)
    assert cfg.internal_tls().url("::1", 5) == "https://[::1]:5"
    assert parse_config({"models": []}).internal_tls().url("127.0.0.1", 5) == "http://127.0.0.1:5"
    assert cfg.with_secret("s").secret() == "s" and cfg.controller_args.secret is None
