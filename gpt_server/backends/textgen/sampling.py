"""Token sampling over a logits vector (numpy): penalties, bias, temperature, top-k/p, min-p.

Shared by engines that hand us raw logits; deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...protocol.worker import SamplingParams

__all__ = ["SamplerState", "log_softmax", "sample_token"]

_FAST_K = 64  # candidates examined before falling back to a full sort for top-p


@dataclass
class SamplerState:
    """Per-sequence state: RNG and the token history penalties need."""

    params: SamplingParams
    rng: np.random.Generator
    n_vocab: int
    prompt: list[int] = field(default_factory=list)
    _counts: np.ndarray | None = None
    _seen: np.ndarray | None = None
    _bias_ids: np.ndarray | None = None
    _bias_vals: np.ndarray | None = None

    def __post_init__(self) -> None:
        p = self.params
        if p.presence_penalty or p.frequency_penalty:
            self._counts = np.zeros(self.n_vocab, dtype=np.int32)
        if p.repetition_penalty != 1.0:
            self._seen = np.zeros(self.n_vocab, dtype=bool)
            ids = np.asarray([t for t in self.prompt if 0 <= t < self.n_vocab], dtype=np.int64)
            self._seen[ids] = True
        if p.logit_bias:
            items = [(k, v) for k, v in p.logit_bias.items() if 0 <= k < self.n_vocab]
            self._bias_ids = np.asarray([k for k, _ in items], dtype=np.int64)
            self._bias_vals = np.asarray([v for _, v in items], dtype=np.float32)

    def accept(self, token: int) -> None:
        if self._counts is not None:
            self._counts[token] += 1
        if self._seen is not None:
            self._seen[token] = True

    def process(self, logits: np.ndarray) -> np.ndarray:
        """Apply bias and penalties (in place on a copy the caller owns)."""
        p = self.params
        if self._bias_ids is not None and self._bias_ids.size:
            logits[self._bias_ids] += self._bias_vals
        if self._seen is not None:
            sel = self._seen
            vals = logits[sel]
            logits[sel] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if self._counts is not None:
            c = self._counts
            logits -= c * np.float32(p.frequency_penalty) + (c > 0) * np.float32(p.presence_penalty)
        return logits


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64, copy=False)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def sample_token(logits: np.ndarray, state: SamplerState) -> int:
    """Choose the next token from processed logits."""
    p = state.params
    if p.temperature <= 0.0:
        return int(np.argmax(logits))
    x = logits.astype(np.float64) / p.temperature
    n = x.shape[0]
    ids: np.ndarray | None = None  # maps positions in x back to token ids after top-k
    if 0 < p.top_k < n:
        ids = np.argpartition(-x, p.top_k - 1)[: p.top_k]
        x = x[ids]
        n = x.shape[0]
    e = np.exp(x - x.max())
    if p.top_p >= 1.0 and p.min_p <= 0.0:  # the common case: sample the whole distribution
        choice = _draw(e, state.rng)
        return int(ids[choice]) if ids is not None else choice
    total = e.sum()
    if p.top_p < 1.0:
        kk = min(_FAST_K, n)
        while True:
            idx = np.argpartition(-x, kk - 1)[:kk] if kk < n else np.arange(n)
            idx = idx[np.argsort(-x[idx], kind="stable")]
            cand = e[idx] / total
            cum = np.cumsum(cand)
            if cum[-1] < p.top_p and kk < n:
                kk = n  # the nucleus is larger than the fast subset: do it exactly
                continue
            cut = min(int(np.searchsorted(cum, p.top_p)) + 1, len(idx))
            idx, cand = idx[:cut], cand[:cut]
            break
    else:
        idx, cand = np.arange(n), e / total
    if p.min_p > 0.0:
        keep = cand >= p.min_p * cand.max()
        idx, cand = idx[keep], cand[keep]
    choice = int(idx[_draw(cand, state.rng)])
    return int(ids[choice]) if ids is not None else choice


def _draw(weights: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probability proportional to ``weights`` (inverse CDF: a cumulative
    sum and one binary search, about half the cost of ``rng.choice(p=...)`` on a vocabulary)."""
    cum = np.cumsum(weights)
    i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
    return min(i, len(weights) - 1)
