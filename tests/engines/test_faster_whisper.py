"""work_mode: faster_whisper — the packaged Whisper tiny.en (CTranslate2)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.audio_helpers import WHISPER_TINY
from tests.contract.asr import AsrSuite


class TestFasterWhisperAsr(AsrSuite):
    @classmethod
    @contextmanager
    def models(cls, tmp: Path) -> Iterator[list[dict[str, Any]]]:
        yield [{cls.model: {"model_config": {"model_name_or_path": WHISPER_TINY}, "model_type": "asr",
                            "work_mode": "faster_whisper", "device": "cpu", "workers": [{"gpus": []}]}}]
