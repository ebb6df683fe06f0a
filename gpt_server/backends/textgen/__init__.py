"""The token-generation kit of in-process LLM engines (llama.cpp, transformers): the engine
thread, sequences, sampling, incremental detokenisation and request limits."""
