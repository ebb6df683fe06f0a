"""``hugepages.collapse`` asks again where the kernel refuses a 2 MiB range once (page lock
contention, no huge page free yet), and gives up on it after a few tries."""

from __future__ import annotations

from typing import Any

import pytest

from gpt_server.backends.llama_cpp import hugepages


class _Libc:
    """madvise/mincore as collapse calls them: every page resident; MADV_COLLAPSE refused per range
    as many times as ``refusals`` says."""

    def __init__(self, refusals: dict[int, int]) -> None:
        self.refusals = refusals
        self.collapse_calls: list[int] = []

    def madvise(self, addr: int, length: int, advice: int) -> int:
        if advice != hugepages._MADV_COLLAPSE:
            return 0
        self.collapse_calls.append(addr)
        if self.refusals.get(addr, 0) > 0:
            self.refusals[addr] -= 1
            return -1
        return 0

    def mincore(self, addr: int, length: int, vec: Any) -> int:
        vec.raw = b"\x01" * len(vec.raw)
        return 0


def test_a_refused_range_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    huge = hugepages.HUGE
    base = 64 * huge
    libc = _Libc({base: 2, base + huge: 5})  # the first yields on the third try, the second never
    monkeypatch.setattr(hugepages, "_libc", lambda: libc)
    done = hugepages.collapse([(base, base + 3 * huge)])
    assert done == 2 * huge  # the first and third ranges
    assert libc.collapse_calls.count(base) == 3
    assert libc.collapse_calls.count(base + huge) == hugepages._TRIES
    assert libc.collapse_calls.count(base + 2 * huge) == 1
