"""work_mode: lmdeploy-pytorch — LMDeploy's api_server with the PyTorch backend.

Not run here: this CI machine has CPUs only. The relay code it shares with the other managed
engines runs the chat and embedding suites in test_llama_cpp_server.py, and its launch command
is checked in tests/unit/test_relay_commands.py.
"""

UNRUNNABLE = {
    "auto": "LMDeploy's PyPI wheels are CUDA builds; its PyTorch backend needs a CUDA (or Ascend) device, not a CPU",
    "embedding": "LMDeploy's PyPI wheels are CUDA builds; its PyTorch backend needs a CUDA (or Ascend) device, not a CPU",
}
