"""The gateway's image store: a private directory, signed expiring URLs, no symlinks followed,
background sweep, nothing wiped at start-up in a configured directory."""

from __future__ import annotations

import os
import stat
import tempfile
import time
from pathlib import Path

import pytest

from gpt_server.errors import GatewayError
from gpt_server.gateway.files import IMAGE_NAME_RE, ImageStore


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def _query(store: ImageStore, name: str, now: float | None = None) -> tuple[str, str]:
    q = dict(p.split("=", 1) for p in store.url_query(name, now).split("&"))
    return q["exp"], q["sig"]


def test_default_directory_is_fresh_private_and_removed(tmp_path: Path) -> None:
    a, b = ImageStore(None, ttl=60), ImageStore(None, ttl=60)
    try:
        assert a.directory != b.directory and a.directory.parent == Path(tempfile.gettempdir())
        assert stat.S_IMODE(a.directory.stat().st_mode) == 0o700
    finally:
        a.stop()
        b.stop()
    assert not a.directory.exists()


def test_configured_directory_is_narrowed_to_0700(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    store = ImageStore(shared, ttl=60)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700
    store.stop()
    assert shared.exists()  # not ours to delete


def test_save_read_and_signed_urls(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "imgs", ttl=60)
    name = store.save(b"\x89PNG data", "png")
    assert IMAGE_NAME_RE.match(name) and name != store.save(b"x", "png")
    assert store.read(name) == b"\x89PNG data"
    assert stat.S_IMODE((tmp_path / "imgs" / name).stat().st_mode) == 0o600
    assert not list((tmp_path / "imgs").glob(".*.part"))
    exp, sig = _query(store, name)
    assert 0 < store.check(name, exp, sig) <= 60
    for bad in ("../etc/passwd", name.replace(".png", ".gif"), "img_short.png", name + "/x"):
        assert store.read(bad) is None
        with pytest.raises(GatewayError) as ei:
            store.check(bad, exp, sig)
        assert ei.value.status == 404
    other = store.save(b"y", "png")
    for args in ((other, exp, sig), (name, str(int(exp) + 1), sig), (name, exp, None), (name, "x", sig)):
        with pytest.raises(GatewayError) as ei:
            store.check(*args)
        assert ei.value.status == 403, args
    old_exp, old_sig = _query(store, name, now=time.time() - 61)  # signed a minute ago
    with pytest.raises(GatewayError) as ei:
        store.check(name, old_exp, old_sig)
    assert ei.value.status == 410
    restarted = ImageStore(tmp_path / "imgs", ttl=60)  # a new key: earlier URLs stop working
    with pytest.raises(GatewayError) as ei:
        restarted.check(name, exp, sig)
    assert ei.value.status == 403


def test_symlinks_and_non_files_are_not_served(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "imgs", ttl=60)
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    link = f"img_{'a' * 32}.png"
    (store.directory / link).symlink_to(secret)
    folder = f"img_{'b' * 32}.png"
    (store.directory / folder).mkdir()
    assert store.read(link) is None and store.read(folder) is None


def test_expiry_and_sweep(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, ttl=60)
    old, fresh = store.save(b"a", "webp"), store.save(b"b", "jpeg")
    _age(tmp_path / old, 120)
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not ours")
    _age(foreign, 10_000)
    assert store.read(old) is None and store.read(fresh) is not None  # expired files are refused at once
    assert store.sweep() == 1
    assert not (tmp_path / old).exists() and (tmp_path / fresh).exists() and foreign.exists()


def test_not_wiped_at_start_and_background_sweep(tmp_path: Path) -> None:
    first = ImageStore(tmp_path, ttl=60)
    kept, doomed = first.save(b"a", "png"), first.save(b"b", "png")
    second = ImageStore(tmp_path, ttl=60, sweep_interval=0.05)  # a restart
    second.start()
    try:
        assert second.read(kept) is not None
        _age(tmp_path / doomed, 120)
        deadline = time.monotonic() + 5
        while (tmp_path / doomed).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (tmp_path / doomed).exists() and (tmp_path / kept).exists()
    finally:
        second.stop()
