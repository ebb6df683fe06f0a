"""The llama.cpp engine's memory in transparent huge pages (Linux).

On the CPU a decode step reads every weight of the model once: for the packaged SmolLM2 Q4_1,
98 MB, about 24,000 pages of 4 KiB a step, most of them a TLB miss. llama.cpp maps the GGUF file
by default, and the kernel backs a read-only file mapping with 4 KiB pages (huge ones there need
``CONFIG_READ_ONLY_THP_FOR_FS``, off in common kernels; ``MADV_COLLAPSE`` on it is refused).

With ``hugepages`` the engine has llama.cpp read the weights into the process's own memory
instead (``LLAMA_LOAD_MODE_NONE``, llama.cpp's ``--no-mmap``). Once the model and its context
are built and a first token has been decoded (so the compute buffers are in memory too), every
private anonymous mapping that appeared meanwhile is marked ``MADV_HUGEPAGE`` (later faults in
it take 2 MiB pages) and each 2 MiB range of it that is at least half in memory is collapsed
into one huge page there and then (``MADV_COLLAPSE``, Linux 6.1+). A decode step was 3–4 %
shorter (bench/README.md, 2026-12-06, seventh session).

What it costs: the weights are the process's own (a second process serving the same file holds
a second copy, where mapped files share the page cache), and the whole file is read at load.
It is best effort: where the kernel refuses (THP set to ``never``, an older kernel, no free
huge page), the memory stays in 4 KiB pages and the engine runs as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import sys
from collections.abc import Iterable
from pathlib import Path

__all__ = ["available", "anon_mappings", "collapse", "collapse_new"]


HUGE = 2 << 20  # 2 MiB, the x86-64 and arm64 (4 KiB base pages) PMD size
_PAGE = 4096
_MADV_HUGEPAGE = 14
_MADV_COLLAPSE = 25
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_TRIES = 3  # MADV_COLLAPSE calls per 2 MiB range


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    lib = ctypes.CDLL(name, use_errno=True)
    lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.madvise.restype = ctypes.c_int
    lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    lib.mincore.restype = ctypes.c_int
    return lib


@functools.cache
def available() -> bool:
    """Linux with transparent huge pages not set to ``never`` (and 4 KiB base pages)."""
    if not sys.platform.startswith("linux") or mmap.PAGESIZE != _PAGE or _libc() is None:
        return False
    try:
        return "[never]" not in _THP.read_text()
    except OSError:
        return False


def anon_mappings() -> frozenset[tuple[int, int]]:
    """The process's private, writable, anonymous mappings as (start, end) addresses."""
    out = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split()
                # address perms offset dev inode [path]: anonymous ones have no path
                if len(fields) != 5 or not fields[1].startswith("rw") or fields[1][3] != "p":
                    continue
                start, end = fields[0].split("-")
                out.add((int(start, 16), int(end, 16)))
    except OSError:
        return frozenset()
    return frozenset(out)


def collapse(regions: Iterable[tuple[int, int]], min_resident: float = 0.5) -> int:
    """Mark ``regions`` for huge pages and collapse their 2 MiB ranges that are at least
    ``min_resident`` in memory into huge pages; the bytes collapsed."""
    lib = _libc()
    if lib is None:
        return 0
    pages = HUGE // _PAGE
    vec = ctypes.create_string_buffer(pages)
    need = max(1, int(pages * min_resident))
    done = 0
    for start, end in sorted(regions):
        lo = -(-start // HUGE) * HUGE
        hi = end // HUGE * HUGE
        if hi <= lo:
            continue
        if lib.madvise(lo, hi - lo, _MADV_HUGEPAGE) != 0:
            continue  # not eligible (the kernel says why in errno; nothing to do about it here)
        for chunk in range(lo, hi, HUGE):
            if lib.mincore(chunk, HUGE, vec) != 0:
                continue
            if pages - vec.raw.count(0) < need:  # a byte a page, 1 where it is in memory
                continue
            for _ in range(_TRIES):  # a refusal can be passing (page lock contention, a huge page not free yet)
                if lib.madvise(chunk, HUGE, _MADV_COLLAPSE) == 0:
                    done += HUGE
                    break
    return done


def collapse_new(before: frozenset[tuple[int, int]]) -> int:
    """``collapse`` the anonymous mappings that were not there (as they are now) in ``before``."""
    return collapse(anon_mappings() - before)
