"""The web playground and dashboard: static files under /ui, no API key needed to load them.

The page itself asks for the API key and sends it as a Bearer token on every API call.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from ...errors import NotFoundError

__all__ = ["public_router", "STATIC_DIR"]

STATIC_DIR = Path(__file__).resolve().parent.parent.parent / "ui" / "static"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}

# Everything comes from this server: no CDN, no inline script (the page works offline).
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

public_router = APIRouter()


@public_router.get("/ui", include_in_schema=False)
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/")


@public_router.get("/ui/{path:path}", include_in_schema=False)
async def ui_file(path: str) -> FileResponse:
    target = (STATIC_DIR / (path or "index.html")).resolve()
    if not target.is_relative_to(STATIC_DIR) or not target.is_file() or target.suffix not in _TYPES:
        raise NotFoundError(f"no such UI file: /ui/{path}", code="not_found")
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if target.suffix == ".html":
        headers["Content-Security-Policy"] = _CSP
    return FileResponse(target, media_type=_TYPES[target.suffix], headers=headers)
