"""Embedding inputs as engines take them: texts and token-id lists apart, ids checked and padded."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import BadRequestError

__all__ = ["split_inputs", "pad_ids"]


def split_inputs(
    items: Sequence[object], vocab_size: int
) -> tuple[list[int], list[int], dict[int, BaseException]]:
    """(rows that are texts, rows that are valid id lists, an error per row with an id outside the
    vocabulary); rows of other types (decoded images) are in none of them."""
    texts: list[int] = []
    ids: list[int] = []
    errors: dict[int, BaseException] = {}
    for i, x in enumerate(items):
        if isinstance(x, str):
            texts.append(i)
            continue
        if not isinstance(x, list):
            continue
        bad = next((t for t in x if t >= vocab_size), None)
        if bad is None:
            ids.append(i)
        else:
            errors[i] = BadRequestError(f"token id {bad} is outside this model's vocabulary (size {vocab_size})", param="input")
    return texts, ids, errors


def pad_ids(seqs: list[list[int]], max_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input ids, attention mask), int64, each sequence cut to ``max_len`` and right-padded."""
    seqs = [s[:max_len] for s in seqs]
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = s
        mask[row, : len(s)] = 1
    return ids, mask
