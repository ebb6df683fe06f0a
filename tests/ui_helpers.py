"""Headless Debian chromium driven by Playwright for the web UI tests (no `playwright install`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "chromium_path", "browser_page"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """The Debian chromium binary, or skip the test saying which apt package is missing."""
    for candidate in (CHROMIUM, shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.skip("chromium is not installed (apt-get install -y chromium); the browser UI test needs it")


@contextmanager
def browser_page(base_url: str) -> Iterator[tuple[object, list[str]]]:
    """A fresh page; yields (page, foreign) where foreign collects requests leaving base_url."""
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = chromium_path()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            page = context.new_page()
            page.set_default_timeout(60_000)
            foreign: list[str] = []
            page.on(
                "request",
                lambda r: None if r.url.startswith((base_url, "data:", "blob:")) else foreign.append(r.url),
            )
            yield page, foreign
        finally:
            browser.close()
