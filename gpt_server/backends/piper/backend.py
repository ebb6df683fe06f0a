"""Piper text-to-speech: the ``speech`` capability.

Synthesis goes sentence by sentence (Piper's own sentence split) and each sentence is
encoded as soon as it exists, so a streamed response starts after the first sentence.
Modes (``stream_mode`` in the payload): ``file`` (the whole file, exact headers) and
``audio`` (chunked raw audio; the gateway frames it as SSE events when the client asks).
A failure mid-stream raises, so the worker cuts its response rather than end it short.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from ...audio.encode import MEDIA_TYPES, SpeechEncoder, output_rate
from ...audio.stream import stream_from_thread
from ...errors import BadRequestError
from ...protocol.audio import SPEECH, SpeechPayload
from ...protocol.kinds import Capability
from ..base import Backend, BackendSpec, BinaryResult, payload_as
from ..devices import require_gpu, wants_gpu
from . import PiperOptions
from .voice import VoiceMap, load_voice

__all__ = ["PiperBackend"]

log = logging.getLogger(__name__)

DEFAULT_MAX_INPUT_CHARS = 4096
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class PiperBackend(Backend):
    capabilities: frozenset[str] = frozenset({"speech"})
    options: PiperOptions

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        mc = self.options
        self.voice: Any = None
        self.voices: VoiceMap | None = None
        self.max_input_chars = mc.max_input_chars or DEFAULT_MAX_INPUT_CHARS
        # espeak-ng (phonemizer) is process-global C state: one sentence at a time
        self._engine_lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self.options.n_parallel or 2

    def load(self) -> None:
        mc = self.options
        threads = mc.n_threads or self.spec.n_threads or min(4, os.cpu_count() or 1)
        import onnxruntime

        cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        require_gpu(self.spec, cuda, "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
        on_gpu = wants_gpu(self.spec) or (self.spec.entry.device == "auto" and bool(self.spec.gpus) and cuda)
        self.voice = load_voice(self.spec.model_path, threads, use_cuda=on_gpu)
        cfg = self.voice.config
        self.voices = VoiceMap(dict(cfg.speaker_id_map), cfg.num_speakers, mc.voices)
        log.info("piper voice %s: %d Hz, %d speaker(s)", self.spec.model_path, cfg.sample_rate, cfg.num_speakers)

    @property
    def sample_rate(self) -> int:
        return int(self.voice.config.sample_rate)

    def _plan(self, p: SpeechPayload) -> tuple[str, Any]:
        """What the payload model cannot check itself; (text, synthesis config)."""
        from piper.config import SynthesisConfig

        text = _CONTROL.sub(" ", p.input)  # control characters (NUL …) break the phonemizer: speak them as spaces
        if not text.strip():
            raise BadRequestError("input must be non-empty text", param="input")
        if len(text) > self.max_input_chars:
            raise BadRequestError(f"input is longer than {self.max_input_chars} characters", param="input")
        assert self.voices is not None and self.voice is not None
        speaker = self.voices.resolve(p.voice)
        cfg = SynthesisConfig(speaker_id=speaker, length_scale=self.voice.config.length_scale / p.speed)
        return text, cfg

    def _sentences(self, text: str, cfg: Any, stop: threading.Event | None = None) -> Iterator[Any]:
        """Piper audio chunks, one per sentence; the engine lock is held only while synthesizing."""
        gen = iter(self.voice.synthesize(text, cfg))
        while stop is None or not stop.is_set():
            with self._engine_lock:
                chunk = next(gen, None)
            if chunk is None:
                return
            yield chunk

    def _encode_stream(self, text: str, cfg: Any, fmt: str, stop: threading.Event) -> Iterator[bytes]:
        enc = SpeechEncoder(fmt, self.sample_rate, streaming=True)
        for chunk in self._sentences(text, cfg, stop):
            yield enc.feed(chunk.audio_int16_array)
        if not stop.is_set():
            yield enc.finish()

    def _encode_file(self, text: str, cfg: Any, fmt: str) -> bytes:
        enc = SpeechEncoder(fmt, self.sample_rate, streaming=False)
        parts = [enc.feed(chunk.audio_int16_array) for chunk in self._sentences(text, cfg)]
        parts.append(enc.finish())
        return b"".join(parts)

    async def invoke(self, capability: Capability, payload: BaseModel) -> BinaryResult | dict[str, Any]:
        if capability != SPEECH:
            return await super().invoke(capability, payload)
        p = payload_as(payload, SpeechPayload)
        text, cfg = self._plan(p)
        fmt, mode = p.response_format, p.stream_mode
        media_type = MEDIA_TYPES[fmt]
        headers = {"x-audio-sample-rate": str(output_rate(fmt, self.sample_rate))}
        if mode == "file":
            body = await asyncio.to_thread(self._encode_file, text, cfg, fmt)
            return BinaryResult(media_type, body, headers)
        chunks = stream_from_thread(lambda stop: self._encode_stream(text, cfg, fmt, stop))
        return BinaryResult(media_type, chunks, headers)
