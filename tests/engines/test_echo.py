"""work_mode: echo — a benchmark-only chat backend that answers without a model. Its serving
path is exercised by tests/integration/test_bench_smoke.py."""

UNRUNNABLE = {
    "auto": "benchmark only: echo has no model, so the chat contract (stop strings, seeds, "
    "logprobs, usage of real tokens) does not apply to it",
}
