"""The worker: one generic runtime for every backend."""
