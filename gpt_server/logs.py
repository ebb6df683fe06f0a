"""Logging set-up for every role."""

from __future__ import annotations

import logging
import os

__all__ = ["setup_logging"]


def setup_logging(level: str | None = None) -> None:
    lvl = (level or os.environ.get("GPT_SERVER_LOG_LEVEL") or "info").upper()
    logging.basicConfig(
        level=getattr(logging, lvl, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    if lvl != "DEBUG":
        logging.getLogger("httpx").setLevel(logging.WARNING)
