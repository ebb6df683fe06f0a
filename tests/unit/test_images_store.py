"""The gateway's image store: names, expiry, background sweep, nothing wiped at start-up."""

from __future__ import annotations

import os
import time
from pathlib import Path

from gpt_server.gateway.files import IMAGE_NAME_RE, ImageStore


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_save_and_serve(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "imgs", ttl=60)
    name = store.save(b"\x89PNG data", "png")
    assert IMAGE_NAME_RE.match(name) and name != store.save(b"x", "png")
    assert store.path(name).read_bytes() == b"\x89PNG data"
    assert not list((tmp_path / "imgs").glob(".*.part"))
    for bad in ("../etc/passwd", name.replace(".png", ".gif"), "img_short.png", name + "/x"):
        assert store.path(bad) is None


def test_expiry_and_sweep(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, ttl=60)
    old, fresh = store.save(b"a", "webp"), store.save(b"b", "jpeg")
    _age(tmp_path / old, 120)
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not ours")
    _age(foreign, 10_000)
    assert store.path(old) is None and store.path(fresh) is not None  # expired files are refused at once
    assert store.sweep() == 1
    assert not (tmp_path / old).exists() and (tmp_path / fresh).exists() and foreign.exists()


def test_not_wiped_at_start_and_background_sweep(tmp_path: Path) -> None:
    first = ImageStore(tmp_path, ttl=60)
    kept, doomed = first.save(b"a", "png"), first.save(b"b", "png")
    second = ImageStore(tmp_path, ttl=60, sweep_interval=0.05)  # a restart
    second.start()
    try:
        assert second.path(kept) is not None
        _age(tmp_path / doomed, 120)
        deadline = time.monotonic() + 5
        while (tmp_path / doomed).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (tmp_path / doomed).exists() and (tmp_path / kept).exists()
    finally:
        second.stop()
