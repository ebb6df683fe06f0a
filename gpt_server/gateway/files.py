"""The gateway's image store: files behind ``/v1/files/images/<id>`` that expire.

Images asked for with ``response_format=url`` are written here (the worker only returns
base64; a client cannot reach worker ports). A file is downloadable for ``ttl`` seconds
after it is written; a daemon thread deletes expired files every ``sweep_interval``
seconds. Nothing is wiped at start-up: files of a previous run live out their time.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["ImageStore", "IMAGE_NAME_RE", "MEDIA_TYPES", "default_images_dir"]

log = logging.getLogger(__name__)

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
IMAGE_NAME_RE = re.compile(r"^img_[A-Za-z0-9_-]{32}\.(png|jpeg|webp)$")


def default_images_dir() -> Path:
    return Path(tempfile.gettempdir()) / "gpt_server_images"


class ImageStore:
    def __init__(self, directory: str | os.PathLike[str] | None, ttl: float, sweep_interval: float | None = None) -> None:
        self.directory = Path(directory) if directory else default_images_dir()
        self.ttl = ttl
        self.sweep_interval = sweep_interval if sweep_interval is not None else max(1.0, min(ttl / 2, 300.0))
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # ---- files --------------------------------------------------------------------
    def save(self, data: bytes, fmt: str) -> str:
        """Write ``data``; the file's name (its id in the URL). Blocking: call in a thread."""
        if fmt not in MEDIA_TYPES:
            raise ValueError(f"unknown image format {fmt!r}")
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"img_{secrets.token_urlsafe(24)}.{fmt}"
        tmp = self.directory / f".{name}.part"
        tmp.write_bytes(data)
        os.replace(tmp, self.directory / name)
        return name

    def path(self, name: str) -> Path | None:
        """The file for ``name`` when it exists and has not expired; None otherwise."""
        if not IMAGE_NAME_RE.match(name):
            return None
        p = self.directory / name
        try:
            age = time.time() - p.stat().st_mtime
        except OSError:
            return None
        return p if age <= self.ttl else None

    def sweep(self) -> int:
        """Delete expired files (and stale partial writes); how many were deleted."""
        now = time.time()
        removed = 0
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return 0
        for e in entries:
            if not (IMAGE_NAME_RE.match(e.name) or e.name.endswith(".part")):
                continue  # not ours: never touch other files in a shared directory
            try:
                if now - e.stat().st_mtime > self.ttl:
                    os.unlink(e.path)
                    removed += 1
            except OSError:
                continue
        if removed:
            log.info("image store: deleted %d expired file(s) from %s", removed, self.directory)
        return removed

    # ---- background cleanup ----------------------------------------------------------
    def start(self) -> None:
        """Start the cleanup thread (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, name="image-store-sweep", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:  # the sweeper must survive anything
                log.exception("image store sweep failed")
            self._stop.wait(self.sweep_interval)
