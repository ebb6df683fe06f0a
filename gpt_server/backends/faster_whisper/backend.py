"""faster-whisper (CTranslate2 Whisper): ``transcribe`` and ``translate`` capabilities.

Uploads arrive base64 in the payload, are decoded with PyAV (soundfile as fallback) to
16 kHz mono off the event loop, and the model's verbose transcript is returned; the
gateway formats it (json, text, srt, vtt, verbose_json). A streamed transcript is NDJSON
of transcript events (the gateway sends them on as SSE).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from pydantic import BaseModel

from ...audio.decode import MAX_DECODE_SECONDS, decode_audio
from ...audio.stream import stream_from_thread
from ...errors import BadRequestError
from ...protocol.audio import TranscribePayload, TranscriptTextDelta, TranscriptTextDone
from ...protocol.kinds import Capability
from ..base import Backend, BackendSpec, BinaryResult, InvokeResult, payload_as
from ..devices import require_gpu, wants_gpu
from . import FasterWhisperOptions

__all__ = ["FasterWhisperBackend"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000


def _ndjson_line(event: BaseModel) -> bytes:
    return event.__pydantic_serializer__.to_json(event) + b"\n"


class FasterWhisperBackend(Backend):
    capabilities: frozenset[str] = frozenset({"transcribe", "translate"})
    options: FasterWhisperOptions

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        self.model: Any = None
        mc = self.options
        self._capacity = mc.n_parallel or 1
        self._sem = asyncio.Semaphore(self._capacity)
        self.max_seconds = mc.max_audio_seconds or MAX_DECODE_SECONDS
        self.beam_size = mc.beam_size or 5

    @property
    def capacity(self) -> int:
        return self._capacity

    def load(self) -> None:
        from faster_whisper import WhisperModel

        mc = self.options
        import ctranslate2

        cuda = ctranslate2.get_cuda_device_count() > 0
        require_gpu(self.spec, cuda, "ctranslate2 finds no CUDA device")
        on_gpu = wants_gpu(self.spec) or (self.spec.entry.device == "auto" and bool(self.spec.gpus) and cuda)
        device = "cuda" if on_gpu else "cpu"
        compute_type = mc.compute_type or ("float16" if on_gpu else "int8")
        threads = mc.n_threads or self.spec.n_threads or min(4, os.cpu_count() or 1)
        self.model = WhisperModel(
            self.spec.model_path,
            device=device,
            compute_type=compute_type,
            cpu_threads=threads,
            num_workers=self._capacity,
            local_files_only=True,
        )
        log.info("faster-whisper %s on %s (%s, multilingual=%s)", self.spec.model_path, device, compute_type, self.multilingual)

    @property
    def multilingual(self) -> bool:
        return bool(self.model.model.is_multilingual)

    def _options(self, p: TranscribePayload, task: Capability) -> dict[str, Any]:
        language = p.language
        if language is not None:
            language = language.lower()
            if language not in self.model.supported_languages:
                raise BadRequestError(
                    f"language '{language}' is not supported by this model "
                    f"(supported: {', '.join(self.model.supported_languages[:20])}"
                    f"{' …' if len(self.model.supported_languages) > 20 else ''})",
                    param="language",
                )
        temperature = p.temperature
        return {
            "language": language,
            # an English-only model's output is already English: translation = transcription
            "task": str(task) if self.multilingual else "transcribe",
            "initial_prompt": p.prompt or None,
            "temperature": temperature if temperature > 0 else [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            "beam_size": self.beam_size,
            "word_timestamps": p.word_timestamps,
        }

    def _segments(self, audio: Any, options: dict[str, Any]) -> tuple[Iterator[dict[str, Any]], Any]:
        """Transcribe lazily: (segments as plain dicts, as they are decoded; transcription info)."""
        segments_iter, info = self.model.transcribe(audio, **options)

        def plain() -> Iterator[dict[str, Any]]:
            for i, seg in enumerate(segments_iter):
                yield {
                    "id": i,
                    "seek": int(seg.seek),
                    "start": round(float(seg.start), 3),
                    "end": round(float(seg.end), 3),
                    "text": seg.text,
                    "tokens": list(seg.tokens),
                    "temperature": float(seg.temperature or 0.0),
                    "avg_logprob": float(seg.avg_logprob),
                    "compression_ratio": float(seg.compression_ratio),
                    "no_speech_prob": float(seg.no_speech_prob),
                    "words": [
                        {"word": w.word, "start": round(float(w.start), 3), "end": round(float(w.end), 3)}
                        for w in (seg.words or [])
                    ],
                }

        return plain(), info

    def _decode(self, data: bytes) -> Any:
        return decode_audio(data, SAMPLE_RATE, self.max_seconds)

    def _run(self, data: bytes, options: dict[str, Any], task: str) -> dict[str, Any]:
        segs, info = self._segments(self._decode(data), options)
        segments = list(segs)
        words = [w for s in segments for w in s.pop("words")]
        result: dict[str, Any] = {
            "task": task,
            "language": info.language,
            "duration": round(float(info.duration), 3),
            "text": "".join(s["text"] for s in segments).strip(),
            "segments": segments,
        }
        if options["word_timestamps"]:
            result["words"] = words
        return result

    def _events(self, audio: Any, options: dict[str, Any], stop: threading.Event) -> Iterator[bytes]:
        """OpenAI transcript stream: transcript.text.delta per segment, then transcript.text.done."""
        segs, _ = self._segments(audio, options)
        parts: list[str] = []
        for seg in segs:
            if stop.is_set():
                return
            delta = seg["text"] if parts else seg["text"].lstrip()
            parts.append(delta)
            yield _ndjson_line(TranscriptTextDelta(delta=delta))
        yield _ndjson_line(TranscriptTextDone(text="".join(parts).strip()))

    async def _stream(self, audio: Any, options: dict[str, Any]) -> AsyncIterator[bytes]:
        async with self._sem:
            async for chunk in stream_from_thread(lambda stop: self._events(audio, options, stop)):
                yield chunk

    async def invoke(self, capability: Capability, payload: BaseModel) -> InvokeResult:
        if capability not in self.capabilities:
            return await super().invoke(capability, payload)
        p = payload_as(payload, TranscribePayload)
        data = p.file
        options = self._options(p, capability)
        if p.stream:
            audio = await asyncio.to_thread(self._decode, data)  # a bad file is a 400 before the stream starts
            return BinaryResult("application/x-ndjson", self._stream(audio, options))
        async with self._sem:
            return await asyncio.to_thread(self._run, data, options, capability)
