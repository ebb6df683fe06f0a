"""The model's tokenizer on the GPT Server side: chat template, token counts, stop/EOS ids.

A GGUF file is read through llama.cpp with ``vocab_only`` (no weights); a directory through
transformers' ``AutoTokenizer``. Both libraries are imported only when a worker loads one.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

__all__ = ["Tokenizer", "load_tokenizer"]


class Tokenizer(Protocol):
    chat_template: str | None
    bos_token: str
    eos_token: str
    eos_id: int | None
    pad_id: int | None
    vocab_size: int
    add_bos: bool

    def encode(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_id(self, text: str) -> int | None: ...

    def token_strs(self, ids: list[int]) -> list[str]: ...


class GgufTokenizer:
    def __init__(self, path: str) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        meta: dict[str, str] = dict(self._llm.metadata)
        self.chat_template = meta.get("tokenizer.chat_template")
        self.vocab_size = int(self._llm.n_vocab())
        vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        self.eos_id = _id(meta.get("tokenizer.ggml.eos_token_id"))
        self.pad_id = _id(meta.get("tokenizer.ggml.padding_token_id"))
        bos = _id(meta.get("tokenizer.ggml.bos_token_id"))
        self.bos_token = self.decode([bos]) if bos is not None else ""
        self.eos_token = self.decode([self.eos_id]) if self.eos_id is not None else ""

    def encode(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special))

    def decode(self, ids: list[int]) -> str:
        return bytes(self._llm.detokenize(ids, special=True)).decode("utf-8", errors="replace")

    def token_id(self, text: str) -> int | None:
        ids = self.encode(text, add_special=False, parse_special=True)
        return ids[0] if len(ids) == 1 else None

    def token_strs(self, ids: list[int]) -> list[str]:
        return [self.decode([i]) for i in ids]


class HfTokenizer:
    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self._tok: Any = AutoTokenizer.from_pretrained(path)
        t = self._tok
        self.chat_template = t.chat_template if isinstance(t.chat_template, str) else None
        self.vocab_size = len(t)
        self.bos_token = t.bos_token or ""
        self.eos_token = t.eos_token or ""
        self.eos_id = t.eos_token_id
        self.pad_id = t.pad_token_id
        probe = t.encode("a", add_special_tokens=True)
        self.add_bos = t.bos_token_id is not None and bool(probe) and probe[0] == t.bos_token_id

    def encode(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        ids: list[int] = self._tok.encode(text, add_special_tokens=add_special, split_special_tokens=not parse_special)
        return ids

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=False))

    def token_id(self, text: str) -> int | None:
        tid = self._tok.convert_tokens_to_ids(text)
        return tid if isinstance(tid, int) and tid != self._tok.unk_token_id else None

    def token_strs(self, ids: list[int]) -> list[str]:
        return [str(s) for s in self._tok.convert_ids_to_tokens(ids)]


def _id(raw: str | None) -> int | None:
    return int(raw) if raw is not None and raw.lstrip("-").isdigit() else None


def load_tokenizer(path: str) -> Tokenizer:
    """A GGUF file or a Hugging Face tokenizer directory (FileNotFoundError when neither)."""
    if os.path.isfile(path) and path.endswith(".gguf"):
        return GgufTokenizer(path)
    if os.path.isdir(path):
        return HfTokenizer(path)
    raise FileNotFoundError(f"tokenizer_path must be a GGUF file or a Hugging Face tokenizer directory: {path}")
