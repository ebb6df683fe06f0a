"""The web playground and dashboard: static files under /ui, no API key needed to load them.

The page itself asks for the API key and sends it as a Bearer token on every API call.
Each model kind's tab is one module under ``static/js/tabs/``; ``/ui/tabs.json`` lists the
modules found there, so adding a tab is adding its file (the page imports each one).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from ...errors import NotFoundError

__all__ = ["public_router", "STATIC_DIR", "TABS_DIR", "tab_modules"]

STATIC_DIR = Path(__file__).resolve().parent.parent.parent / "ui" / "static"
TABS_DIR = STATIC_DIR / "js" / "tabs"

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


def tab_modules() -> list[str]:
    """The tab modules on disk, as paths relative to /ui/ (``js/tabs/chat.js`` …), sorted."""
    return sorted(f"js/tabs/{p.name}" for p in TABS_DIR.glob("*.js") if p.is_file())


@public_router.get("/ui/tabs.json", include_in_schema=False)
async def ui_tabs() -> JSONResponse:
    return JSONResponse({"tabs": tab_modules()}, headers={"Cache-Control": "no-cache"})


@public_router.get("/ui/{path:path}", include_in_schema=False)
async def ui_file(path: str) -> FileResponse:
    target = (STATIC_DIR / (path or "index.html")).resolve()
    if not target.is_relative_to(STATIC_DIR) or not target.is_file() or target.suffix not in _TYPES:
        raise NotFoundError(f"no such UI file: /ui/{path}", code="not_found")
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if target.suffix == ".html":
        headers["Content-Security-Policy"] = _CSP
    return FileResponse(target, media_type=_TYPES[target.suffix], headers=headers)
