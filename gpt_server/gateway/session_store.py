"""LMDeploy interactive sessions (``/v1/chat/interactive``): the chat history of each
session, in memory, per API key (another key's session of the same id is another session),
bounded (sessions, bytes of all histories, bytes and turns of one), expiring when idle.
A session's requests carry its affinity key, so they land on the replica that holds its
KV prefix."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import BadRequestError, ConflictError

__all__ = ["Session", "SessionStore"]


@dataclass
class Session:
    owner: str
    session_id: int
    messages: list[dict[str, Any]] = field(default_factory=list)
    history_tokens: int = 0  # tokens of the history (the last turn's prompt and answer)
    turns: int = 0
    size: int = 0
    expires: float = 0.0
    busy: bool = False
    cancel: Any = None  # closes the running turn (``ChatRun.aclose``) while one runs

    @property
    def affinity(self) -> str:
        return f"interactive:{self.owner}:{self.session_id}"


class SessionStore:
    def __init__(self, max_sessions: int, max_bytes: int, max_session_bytes: int, max_turns: int, ttl: float) -> None:
        self.max_sessions, self.max_bytes, self.max_session_bytes = max_sessions, max_bytes, max_session_bytes
        self.max_turns, self.ttl = max_turns, ttl
        self._items: OrderedDict[tuple[str, int], Session] = OrderedDict()  # least recently used first
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def _drop(self, key: tuple[str, int]) -> None:
        s = self._items.pop(key)
        self._bytes -= s.size

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self._items.items() if s.expires <= now and not s.busy]:
            self._drop(key)

    def get(self, owner: str, session_id: int) -> Session | None:
        self._expire(time.monotonic())
        return self._items.get((owner, session_id))

    def begin(self, owner: str, session_id: int) -> Session:
        """The session for a new turn (a fresh one when none is kept), marked busy: one turn
        of a session runs at a time (409 otherwise)."""
        now = time.monotonic()
        self._expire(now)
        s = self._items.get((owner, session_id))
        if s is None:  # kept (empty) while its first turn runs, so a second one sees it busy
            s = self._items[(owner, session_id)] = Session(owner, session_id, expires=now + self.ttl)
        if s.busy:
            raise ConflictError(f"The session_id {session_id} is occupied: a request of this session is running", param="session_id", code="session_busy")
        if s.turns >= self.max_turns:
            raise BadRequestError(
                f"session {session_id} has reached {self.max_turns} turns; end it with interactive_mode false",
                param="session_id",
                code="session_too_long",
            )
        s.busy = True
        return s

    def finish(self, s: Session, messages: list[dict[str, Any]], history_tokens: int, keep: bool) -> None:
        """A turn ended: keep the session with its new history (``keep``), or end it."""
        s.busy, s.cancel = False, None
        key = (s.owner, s.session_id)
        if key in self._items:
            self._drop(key)
        if not keep or self.max_sessions == 0:
            return
        size = len(orjson.dumps(messages))
        if size > self.max_session_bytes:
            return  # over its own bound: the session ends (the next turn starts afresh)
        s.messages, s.history_tokens, s.turns, s.size = messages, history_tokens, s.turns + 1, size
        s.expires = time.monotonic() + self.ttl
        self._items[key] = s
        self._bytes += size
        while len(self._items) > self.max_sessions or self._bytes > self.max_bytes:
            oldest = next((k for k, v in self._items.items() if not v.busy), None)
            if oldest is None:
                break
            self._drop(oldest)

    def abandon(self, s: Session) -> None:
        """A turn failed: the session keeps its history as it was before the turn."""
        s.busy, s.cancel = False, None
        if s.turns == 0 and self._items.get((s.owner, s.session_id)) is s:
            self._drop((s.owner, s.session_id))

    def end(self, owner: str, session_id: int) -> bool:
        key = (owner, session_id)
        s = self._items.get(key)
        if s is None or s.busy:
            return False
        self._drop(key)
        return True
