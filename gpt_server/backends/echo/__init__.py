"""A no-op backend for benchmarks: the server's own cost, without a model."""
