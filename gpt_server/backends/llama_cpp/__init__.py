"""llama.cpp backend (GGUF) with batched decoding of several sequences."""
