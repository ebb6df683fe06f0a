"""Small helpers for the child processes this server starts (workers, engine servers)."""

from __future__ import annotations

import ctypes
import gc
import signal
import socket
import sys
from collections.abc import Callable

__all__ = ["free_port", "die_with_parent", "killed_with_parent", "settle_heap", "CONFIG_ERROR_EXIT"]

# a worker process exits with this code when its model cannot load because of its config
# (sysexits EX_CONFIG): the launcher stops `serve` (exit 2) instead of restarting it forever
CONFIG_ERROR_EXIT = 78

_PR_SET_PDEATHSIG = 1


def settle_heap() -> None:
    """Collect, then freeze what is alive (``gc.freeze``): the objects of start-up (modules, the
    app, a loaded model's Python side) move to a permanent generation that the garbage
    collector's passes skip. Without it every full collection walks them all: 50-150 ms on this
    project's processes (measured on a 2-core host), with the event loop held and, in a worker,
    the GIL that the engine thread needs between steps, so every stream of the process stalls.
    Frozen objects are still freed by reference counting; cyclic garbage among them never is, so
    freeze only what lives as long as the process: after start-up, and in a worker process after
    its one model loads (an in-process replica, which can be unloaded, is not frozen)."""
    gc.collect()
    gc.freeze()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# resolved here in the parent: the child must not load a library between fork and exec
_prctl = _load_prctl()


def die_with_parent() -> None:
    """``preexec_fn`` for a child that should get SIGTERM when its parent dies without
    stopping it (Linux; elsewhere a no-op)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def killed_with_parent() -> None:
    """``preexec_fn`` for a child that must vanish at once with its parent (SIGKILL, Linux): a
    replica whose Ray actor is gone is lost, like its node."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
