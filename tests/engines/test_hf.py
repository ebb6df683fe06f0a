"""work_mode: hf — transformers, on SmolLM2-135M-Instruct converted from the packaged GGUF
to a Hugging Face directory (the same weights the llama_cpp suite serves)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.contract.chat import ChatSuite


class TestHFChat(ChatSuite):
    @classmethod
    @contextmanager
    def models(cls, tmp: Path) -> Iterator[list[dict[str, Any]]]:
        from tests.hf_helpers import hf_entry, smollm_hf_dir

        yield [hf_entry(cls.model, smollm_hf_dir(), n_parallel=4)]
