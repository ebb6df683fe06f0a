"""work_mode: piper — the packaged Piper voice en_US-joe-medium (22,050 Hz)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.audio_helpers import PIPER_VOICE
from tests.contract.tts import TtsSuite


class TestPiperTts(TtsSuite):
    sample_rate = 22050

    @classmethod
    @contextmanager
    def models(cls, tmp: Path) -> Iterator[list[dict[str, Any]]]:
        yield [{cls.model: {"model_config": {"model_name_or_path": PIPER_VOICE}, "model_type": "tts",
                            "work_mode": "piper", "device": "cpu", "workers": [{"gpus": []}]}}]
