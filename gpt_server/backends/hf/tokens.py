"""Token ids → raw bytes for a Hugging Face tokenizer, end-of-generation ids, logprob entries.

Byte-level BPE tokens (GPT-2 style, ``Ġ``) map back through the inverse byte table,
SentencePiece byte tokens (``<0x0A>``) give their byte, ``▁`` is a space. Special tokens
give no text, as llama.cpp's detokeniser does.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["TokenTable"]

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _is_byte_level(tok: Any) -> bool:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (ValueError, AttributeError):
        return False
    return "ByteLevel" in json.dumps(decoder)


class TokenTable:
    """Per-token bytes and the ids that end generation."""

    def __init__(self, tok: Any, n_vocab: int, eos_ids: set[int]) -> None:
        self.n_vocab = n_vocab
        self.eos_ids = eos_ids
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (min(eos_ids) if eos_ids else 0)
        special = set(getattr(tok, "all_special_ids", []) or [])
        n_tok = len(tok)
        strings = tok.convert_ids_to_tokens(list(range(min(n_tok, n_vocab))))
        byte_level = _is_byte_level(tok)
        table = _byte_decoder() if byte_level else {}
        pieces: list[bytes] = []
        for i, s in enumerate(strings):
            if s is None or i in special:
                pieces.append(b"")
            elif byte_level:
                pieces.append(bytes(table[c] for c in s) if all(c in table for c in s) else s.encode())
            elif m := _BYTE_TOKEN.match(s):
                pieces.append(bytes([int(m.group(1), 16)]))
            else:
                pieces.append(s.replace("\u2581", " ").encode())
        pieces.extend(b"" for _ in range(n_vocab - len(pieces)))
        self._pieces = pieces

    def piece(self, token: int) -> bytes:
        return self._pieces[token] if 0 <= token < len(self._pieces) else b""

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def text_of(self, token: int) -> tuple[str, list[int]]:
        pc = self.piece(token)
        return pc.decode("utf-8", errors="replace"), list(pc)
