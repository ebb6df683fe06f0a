"""work_mode: lmdeploy-turbomind — LMDeploy's api_server with the TurboMind backend.

Not run here: this CI machine has CPUs only. The relay code it shares with the other managed
engines runs the chat and embedding suites in test_llama_cpp_server.py, and its launch command
is checked in tests/unit/test_relay_commands.py.
"""

UNRUNNABLE = {
    "auto": "LMDeploy's TurboMind backend is CUDA kernels only; there is no CPU build",
    "embedding": "LMDeploy's TurboMind backend is CUDA kernels only; there is no CPU build",
}
