"""work_mode: llama_cpp — the packaged SmolLM2-135M-Instruct GGUF, in process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.contract.chat import ChatSuite
from tests.helpers import smollm_entry


class TestLlamaCppChat(ChatSuite):
    @classmethod
    @contextmanager
    def models(cls, tmp: Path) -> Iterator[list[dict[str, Any]]]:
        yield [smollm_entry(cls.model, n_threads=1, n_parallel=4)]
