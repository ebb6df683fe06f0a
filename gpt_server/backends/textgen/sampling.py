"""Token sampling over a logits vector (numpy): penalties, bias, temperature, top-k/p, min-p.

Shared by engines that hand us raw logits; deterministic for a given seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ...protocol.worker import SamplingParams

__all__ = ["SamplerState", "log_softmax", "sample_token"]

_FAST_K = 64  # candidates examined before falling back to a full sort for top-p
_MAX_INV_T = 1e30  # 1 / temperature above this is greedy (float32 ends near 3.4e38)


@dataclass
class SamplerState:
    """Per-sequence state: RNG and the token history penalties need."""

    params: SamplingParams
    rng: np.random.Generator
    n_vocab: int
    prompt: list[int] = field(default_factory=list)
    _counts: np.ndarray | None = None  # generated tokens' counts (presence/frequency penalties)
    _counted: list[int] = field(default_factory=list)  # the tokens counted, each once
    _seen: np.ndarray | None = None  # prompt and generated tokens (repetition penalty)
    _seen_ids: list[int] = field(default_factory=list)  # the tokens seen, each once
    _counted_arr: np.ndarray | None = None  # ``_counted`` as an array, until a new token is counted
    _seen_arr: np.ndarray | None = None  # ``_seen_ids`` as an array, until a new token is seen
    _bias_ids: np.ndarray | None = None
    _bias_vals: np.ndarray | None = None
    plain_greedy: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        p = self.params
        if p.presence_penalty or p.frequency_penalty:
            self._counts = np.zeros(self.n_vocab, dtype=np.int32)
        if p.repetition_penalty != 1.0:
            self._seen = np.zeros(self.n_vocab, dtype=bool)
            ids = np.asarray([t for t in self.prompt if 0 <= t < self.n_vocab], dtype=np.int64)
            self._seen[ids] = True
            self._seen_ids = np.flatnonzero(self._seen).tolist()
        if p.logit_bias:
            items = [(k, v) for k, v in p.logit_bias.items() if 0 <= k < self.n_vocab]
            self._bias_ids = np.asarray([k for k, _ in items], dtype=np.int64)
            self._bias_vals = np.asarray([v for _, v in items], dtype=np.float32)
        # the most likely token of the logits as they are: no bias, penalties or logprobs to work out
        self.plain_greedy = p.temperature <= 0.0 and not self.modifies and not p.logprobs

    def accept(self, token: int) -> None:
        if self._counts is not None:
            if not self._counts[token]:
                self._counted.append(token)
                self._counted_arr = None
            self._counts[token] += 1
        if self._seen is not None and not self._seen[token]:
            self._seen[token] = True
            self._seen_ids.append(token)
            self._seen_arr = None

    @property
    def modifies(self) -> bool:
        """``process`` changes logits (bias or penalties)."""
        return self._bias_ids is not None or self._seen is not None or self._counts is not None

    def process(self, logits: np.ndarray) -> np.ndarray:
        """Apply bias and penalties (in place on a copy the caller owns), on the tokens they
        concern only (a pass over the vocabulary per token was ~0.1 ms)."""
        p = self.params
        if self._bias_ids is not None and self._bias_ids.size:
            logits[self._bias_ids] += self._bias_vals
        if self._seen is not None and self._seen_ids:
            if self._seen_arr is None:
                self._seen_arr = np.asarray(self._seen_ids, dtype=np.int64)
            sel = self._seen_arr
            vals = logits[sel]
            logits[sel] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if self._counts is not None and self._counted:
            if self._counted_arr is None:
                self._counted_arr = np.asarray(self._counted, dtype=np.int64)
            sel = self._counted_arr
            c = self._counts[sel]
            logits[sel] -= c * np.float32(p.frequency_penalty) + np.float32(p.presence_penalty)
        return logits


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64, copy=False)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def sample_token(logits: np.ndarray, state: SamplerState) -> int:
    """Choose the next token from processed logits.

    In float32, with no pass over the vocabulary that is not needed: a default request
    (temperature 1, no top-k/p) costs one exp and two block sums (``_draw``) where a cumulative
    sum over the vocabulary in float64 cost ~0.4 ms a token on a 49k vocabulary (bench/README.md)."""
    p = state.params
    if p.temperature <= 0.0:
        return int(np.argmax(logits))
    x = np.asarray(logits, dtype=np.float32)
    n = x.shape[0]
    ids: np.ndarray | None = None  # maps positions in x back to token ids after top-k
    if 0 < p.top_k < n:
        ids = np.argpartition(x, n - p.top_k)[n - p.top_k :]
        x = x[ids]
        n = x.shape[0]
    top, inv_t = float(x.max()), 1.0 / p.temperature
    if not math.isfinite(top) or inv_t > _MAX_INV_T:
        # no distribution to draw from: a logit of +inf (a repetition penalty near 0, a bias)
        # or nan, or a temperature so small its inverse overflows float32: the most likely token
        choice = int(np.argmax(np.where(np.isnan(x), -np.inf, x)))
        return int(ids[choice]) if ids is not None else choice
    # softmax(x / T) up to a factor: exp((x - max) / T), each in [0, 1], the largest 1
    e = x - np.float32(top)
    e *= np.float32(inv_t)
    np.exp(e, out=e)
    if p.top_p >= 1.0 and p.min_p <= 0.0:  # the common case: sample the whole distribution
        choice = _draw(e, state.rng)
        return int(ids[choice]) if ids is not None else choice
    if p.top_p < 1.0:
        idx, cand = _nucleus(e, p.top_p)
        if p.min_p > 0.0:  # relative to the most likely token, whose weight is the largest
            keep = cand >= p.min_p * cand.max()
            idx, cand = idx[keep], cand[keep]
    else:  # min-p alone: the tokens at least min_p as likely as the most likely one (weight 1)
        idx = np.flatnonzero(e >= np.float32(p.min_p))
        cand = e[idx]
    choice = int(idx[_draw(cand, state.rng)])
    return int(ids[choice]) if ids is not None else choice


def _nucleus(e: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The smallest set of most likely tokens whose probability reaches ``top_p``: their
    positions in ``e`` (most likely first) and probabilities. The top ``_FAST_K`` first, all
    where they fall short."""
    n = e.shape[0]
    total = float(e.sum(dtype=np.float64))
    kk = min(_FAST_K, n)
    while True:
        idx = np.argpartition(e, n - kk)[n - kk :] if kk < n else np.arange(n)
        idx = idx[np.argsort(-e[idx], kind="stable")]
        cand = e[idx].astype(np.float64) / total
        cum = np.cumsum(cand)
        if cum[-1] >= top_p or kk >= n:
            cut = min(int(np.searchsorted(cum, top_p)) + 1, len(idx))
            return idx[:cut], cand[:cut]
        kk = n  # the nucleus is larger than the fast subset: do it exactly


_BLOCK = 256  # _draw's block size: two cumulative sums of ~sqrt(vocabulary) instead of one of all


def _draw(weights: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probability proportional to ``weights`` (non-negative, one positive):
    inverse CDF by blocks. The block sums' cumulative sum finds the block, the block's own finds
    the index: the same draw as one cumulative sum over all (up to rounding), at a fraction of it."""
    n = len(weights)
    r = rng.random()
    if n <= 4 * _BLOCK:
        cum = np.cumsum(weights, dtype=np.float64)
        return _index(weights, cum, r * cum[-1])
    full = n - n % _BLOCK
    sums = weights[:full].reshape(-1, _BLOCK).sum(axis=1, dtype=np.float64)
    if full < n:
        sums = np.append(sums, weights[full:].sum(dtype=np.float64))
    cum = np.cumsum(sums)
    target = r * cum[-1]
    b = _index(sums, cum, target)
    lo = b * _BLOCK
    hi = min(lo + _BLOCK, n)
    inner = np.cumsum(weights[lo:hi], dtype=np.float64)
    return lo + _index(weights[lo:hi], inner, target - (cum[b - 1] if b else 0.0))


def _index(weights: np.ndarray, cum: np.ndarray, target: float) -> int:
    """The first position whose cumulative weight exceeds ``target``; where rounding puts the
    target past the end, the last position with a weight (never one of weight 0; the largest
    where none has one)."""
    i = int(np.searchsorted(cum, target, side="right"))
    if i < len(weights):
        return i
    heavy = np.flatnonzero(weights > 0)
    return int(heavy[-1]) if heavy.size else int(np.argmax(weights))
