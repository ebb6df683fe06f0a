"""The gateway's image store: files behind ``/v1/files/images/<id>?exp=…&sig=…`` that expire.

Images asked for with ``response_format=url`` are written here (the worker only returns
base64; a client cannot reach worker ports). The directory is private to this server: a
fresh ``mkdtemp`` (mode 0700, removed at shutdown) unless ``serve_args.images_dir`` names
one, which is created or narrowed to mode 0700 and must belong to this user.

A URL is a capability: it carries its expiry and an HMAC of name and expiry under a key made
at each start, so it works without an API key (a browser shows it in an ``<img>``) until it
expires, and not after a restart. Files are opened without following symlinks and must be
regular files. A daemon thread deletes files older than ``ttl`` every ``sweep_interval`` s.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path

from ..errors import GatewayError, NotFoundError, PermissionDeniedError

__all__ = ["ImageStore", "IMAGE_NAME_RE", "MEDIA_TYPES", "ImageGoneError"]

log = logging.getLogger(__name__)

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
IMAGE_NAME_RE = re.compile(r"^img_[A-Za-z0-9_-]{32}\.(png|jpeg|webp)$")
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_MAX_FILE = 64 * 1024 * 1024


class ImageGoneError(GatewayError):
    status = 410
    openai_type = "invalid_request_error"
    default_code = "expired"


def _private_dir(directory: str | os.PathLike[str] | None) -> tuple[Path, bool]:
    """The store's directory, mode 0700 and ours; (path, whether we created it for this run)."""
    if not directory:
        return Path(tempfile.mkdtemp(prefix="gpt-server-images-")), True
    path = Path(directory).expanduser().resolve()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"images_dir {path} is not a directory")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise PermissionError(f"images_dir {path} belongs to another user; give the server a directory of its own")
    if stat.S_IMODE(st.st_mode) != 0o700:
        log.warning("image store: %s was mode %o; narrowing it to 0700", path, stat.S_IMODE(st.st_mode))
        path.chmod(0o700)
    return path, False


class ImageStore:
    def __init__(self, directory: str | os.PathLike[str] | None, ttl: float, sweep_interval: float | None = None) -> None:
        self.directory, self._owned = _private_dir(directory)
        self.ttl = ttl
        self.sweep_interval = sweep_interval if sweep_interval is not None else max(1.0, min(ttl / 2, 300.0))
        self._key = secrets.token_bytes(32)  # per start: URLs of an earlier run stop working
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # ---- signed URLs ----------------------------------------------------------------
    def _sig(self, name: str, exp: int) -> str:
        mac = hmac.new(self._key, f"{name}\n{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def url_query(self, name: str, now: float | None = None) -> str:
        """``exp=…&sig=…`` for ``name``: valid for ``ttl`` seconds from now."""
        exp = int((time.time() if now is None else now) + self.ttl)
        return f"exp={exp}&sig={self._sig(name, exp)}"

    def check(self, name: str, exp: str | None, sig: str | None) -> int:
        """Seconds the URL stays valid; raises 404 (bad name), 403 (bad signature) or 410 (expired)."""
        if not IMAGE_NAME_RE.match(name):
            raise NotFoundError("no such image", param="name", code="not_found")
        try:
            when = int(exp or "")
        except ValueError:
            when = -1
        if when < 0 or not sig or not hmac.compare_digest(sig.encode(), self._sig(name, when).encode()):
            raise PermissionDeniedError("this image URL is not valid (altered, or from an earlier run)", code="invalid_signature")
        left = when - int(time.time())
        if left < 0:
            raise ImageGoneError("this image URL has expired")
        return left

    # ---- files --------------------------------------------------------------------
    def save(self, data: bytes, fmt: str) -> str:
        """Write ``data``; the file's name (its id in the URL). Blocking: call in a thread."""
        if fmt not in MEDIA_TYPES:
            raise ValueError(f"unknown image format {fmt!r}")
        name = f"img_{secrets.token_urlsafe(24)}.{fmt}"
        tmp = self.directory / f".{name}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, self.directory / name)
        return name

    def read(self, name: str) -> bytes | None:
        """The bytes of ``name`` if it is a regular file in the store (a symlink is not
        followed) and not past ``ttl``; None otherwise. Blocking: call in a thread."""
        if not IMAGE_NAME_RE.match(name):
            return None
        try:
            fd = os.open(self.directory / name, os.O_RDONLY | _O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            return None  # missing, or a symlink (ELOOP)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_FILE or time.time() - st.st_mtime > self.ttl:
                return None
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read(_MAX_FILE + 1)
        finally:
            os.close(fd)

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
                continue  # not ours: never touch other files
            try:
                if now - e.stat(follow_symlinks=False).st_mtime > self.ttl:
                    os.unlink(e.path)
                    removed += 1
            except OSError:
                continue
        if removed:
            log.info("image store: deleted %d expired file(s)", removed)
        return removed

    # ---- background cleanup ----------------------------------------------------------
    def start(self) -> None:
        """Start the cleanup thread (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            log.info("image store: %s (mode 0700), files kept %.0fs", self.directory, self.ttl)
            self._thread = threading.Thread(target=self._loop, name="image-store-sweep", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the sweep; a directory made for this run is removed with its files."""
        self._stop.set()
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:  # the sweeper must survive anything
                log.exception("image store sweep failed")
            self._stop.wait(self.sweep_interval)
