"""work_mode: trtllm — TensorRT-LLM's trtllm-serve on loopback.

Not run here: this CI machine has CPUs only. The relay code it shares with the other managed
engines runs the chat and embedding suites in test_llama_cpp_server.py, and its launch command
is checked in tests/unit/test_relay_commands.py.
"""

UNRUNNABLE = {
    "auto": "TensorRT-LLM runs only on NVIDIA GPUs (TensorRT engines); no CPU build exists",
    "embedding": "TensorRT-LLM runs only on NVIDIA GPUs (TensorRT engines); no CPU build exists",
}
