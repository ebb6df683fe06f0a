"""Stored Responses API responses (``store: true``): in memory, bounded (entries and bytes,
oldest dropped first), expiring, and owned by the API key that made them —
another key reads them as absent."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request

__all__ = ["ResponseStore", "StoredResponse", "owner_of"]


def owner_of(request: Request) -> str:
    """Who made a request: a hash of its bearer key; one shared owner when the server has
    no API keys (any or no key is then accepted, and is no identity)."""
    if not request.app.state.config.serve_args.api_keys:
        return ""
    header = request.headers.get("authorization", "")
    _, _, token = header.partition(" ")
    return hashlib.sha256(token.strip().encode()).hexdigest() if token.strip() else ""


@dataclass
class StoredResponse:
    owner: str
    expires: float
    size: int
    response: dict[str, Any]
    input_items: list[dict[str, Any]]  # this request's input, with ids
    history: list[dict[str, Any]]  # the whole conversation before this response's output
    chain: str = ""  # the dispatch affinity key of its previous_response_id chain


class ResponseStore:
    def __init__(self, max_entries: int, max_bytes: int, ttl: float) -> None:
        self.max_entries, self.max_bytes, self.ttl = max_entries, max_bytes, ttl
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def _drop(self, rid: str) -> None:
        entry = self._items.pop(rid)
        self._bytes -= entry.size

    def _expire(self, now: float) -> None:
        while self._items:
            rid, entry = next(iter(self._items.items()))
            if entry.expires > now:
                break
            self._drop(rid)

    def put(
        self, owner: str, response: dict[str, Any], input_items: list[dict[str, Any]], history: list[dict[str, Any]], chain: str = ""
    ) -> bool:
        """Keep a response (False when it alone is over the byte bound)."""
        size = len(orjson.dumps([response, history]))
        if self.max_entries == 0 or size > self.max_bytes:
            return False
        now = time.monotonic()
        self._expire(now)
        rid = response["id"]
        if rid in self._items:
            self._drop(rid)
        self._items[rid] = StoredResponse(owner, now + self.ttl, size, response, input_items, history, chain)
        self._bytes += size
        while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._items)))
        return True

    def get(self, owner: str, rid: str) -> StoredResponse | None:
        now = time.monotonic()
        self._expire(now)
        entry = self._items.get(rid)
        if entry is not None and entry.expires <= now:
            self._drop(rid)
            return None
        if entry is None or entry.owner != owner:
            return None
        return entry

    def delete(self, owner: str, rid: str) -> bool:
        entry = self.get(owner, rid)
        if entry is None:
            return False
        self._drop(rid)
        return True
