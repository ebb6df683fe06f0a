"""``tokenize`` / ``detokenize`` for in-process chat engines, written once over a few hooks.

Messages are rendered by the engine's own chat path (so ``count`` is what chat bills);
tokenisation runs in a thread, and so does detokenising a long list.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from typing import Any

from pydantic import BaseModel

from ...chat.tool_parsers import ToolParser
from ...chat.tools import parser_for_request
from ...protocol.kinds import Capability
from ...protocol.tokenize import (
    DETOKENIZE,
    TOKENIZE,
    DetokenizePayload,
    TokenizePayload,
)
from ...protocol.worker import ToolSpec
from ..base import Backend, InvokeResult, payload_as
from .limits import check_token_ids

__all__ = ["Tokenizes", "TOKENIZE_CAPABILITIES", "tokenize_response"]

TOKENIZE_CAPABILITIES = frozenset({TOKENIZE, DETOKENIZE})
_INLINE_DETOKENIZE = 4096  # longer id lists are detokenised off the event loop


class Tokenizes(Backend):
    """Mixin for a chat backend: put it before ``Backend`` in the bases and implement the hooks."""

    tool_parser_name: str

    @abstractmethod
    def _chat_ids(
        self, messages: list[dict[str, Any]], tools: ToolSpec | None, parser: ToolParser | None,
        template_kwargs: dict[str, Any], *, add_generation_prompt: bool, add_special: bool | None,
    ) -> list[int]:
        """The prompt ids chat would send for these messages."""

    @abstractmethod
    def _text_ids(self, text: str, add_special: bool | None) -> list[int]:
        """A raw prompt's ids (``add_special`` None: as completions add them)."""

    @abstractmethod
    def _token_strs(self, ids: list[int]) -> list[str]:
        """The vocabulary strings of ``ids``."""

    @abstractmethod
    def _vocab_size(self) -> int:
        """The vocabulary size; raises ``ServiceUnavailableError`` while the engine is not running."""

    @abstractmethod
    def _decode_ids(self, ids: list[int]) -> str:
        """``ids`` as text, special tokens written out."""

    def _tokenize(self, p: TokenizePayload) -> dict[str, Any]:
        self._vocab_size()  # ready?
        if p.messages is not None:
            parser, _ = parser_for_request(self.tool_parser_name, p.tools)
            toks = self._chat_ids(
                p.messages, p.tools, parser, p.chat_template_kwargs,
                add_generation_prompt=p.add_generation_prompt, add_special=p.add_special_tokens,
            )
        else:
            toks = self._text_ids(p.prompt or "", p.add_special_tokens)
        strs = self._token_strs(toks) if p.return_token_strs else None
        return tokenize_response(toks, self.context_length, strs)

    def _detokenize(self, p: DetokenizePayload) -> dict[str, Any]:
        check_token_ids(p.tokens, self._vocab_size())
        return {"prompt": self._decode_ids(p.tokens)}

    async def invoke(self, capability: Capability, payload: BaseModel) -> InvokeResult:
        if capability == TOKENIZE:
            return await asyncio.to_thread(self._tokenize, payload_as(payload, TokenizePayload))
        if capability == DETOKENIZE:
            p = payload_as(payload, DetokenizePayload)
            if len(p.tokens) > _INLINE_DETOKENIZE:
                return await asyncio.to_thread(self._detokenize, p)
            return self._detokenize(p)
        return await super().invoke(capability, payload)


def tokenize_response(tokens: list[int], max_model_len: int | None, token_strs: list[str] | None) -> dict[str, Any]:
    """vLLM's ``TokenizeResponse``: ``token_strs`` only when asked for."""
    out: dict[str, Any] = {"count": len(tokens), "max_model_len": max_model_len, "tokens": tokens}
    if token_strs is not None:
        out["token_strs"] = token_strs
    return out
