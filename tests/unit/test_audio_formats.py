"""Transcript formatting and audio request schemas (pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gpt_server.gateway.transcripts import format_transcript, srt_timestamp, vtt_timestamp
from gpt_server.protocol.audio import SpeechRequest, TranscriptionForm, TranscriptResult
from tests.audio_helpers import parse_srt, parse_vtt, wer

RESULT = TranscriptResult.model_validate({
    "language": "en",
    "duration": 3725.5,
    "text": "Hello there. General Kenobi.",
    "segments": [
        {"id": 0, "start": 0.0, "end": 1.234, "text": " Hello there."},
        {"id": 1, "start": 3661.5, "end": 3662.0004, "text": " General Kenobi."},
        {"id": 2, "start": 3662.0, "end": 3662.0, "text": "  "},
    ],
    "words": [{"word": " Hello", "start": 0.0, "end": 0.5}],
})


def test_timestamps() -> None:
    assert srt_timestamp(0) == "00:00:00,000"
    assert srt_timestamp(3661.5) == "01:01:01,500"
    assert vtt_timestamp(59.9996) == "00:01:00.000"
    assert vtt_timestamp(-1) == "00:00:00.000"


def test_srt_and_vtt_parse_back() -> None:
    srt, media = format_transcript(RESULT, "srt", [])
    assert media.startswith("text/plain")
    cues = parse_srt(srt)
    assert cues == [(0.0, 1.234, "Hello there."), (3661.5, 3662.0, "General Kenobi.")]
    vtt, media = format_transcript(RESULT, "vtt", [])
    assert media.startswith("text/vtt")
    assert parse_vtt(vtt) == cues


def test_json_text_and_verbose() -> None:
    assert format_transcript(RESULT, "json", []) == ({"text": RESULT.text}, "application/json")
    assert format_transcript(RESULT, "text", [])[0] == RESULT.text + "\n"
    body, _ = format_transcript(RESULT, "verbose_json", [])
    assert body["language"] == "en" and len(body["segments"]) == 3 and "words" not in body
    body, _ = format_transcript(RESULT, "verbose_json", ["word"])
    assert "segments" not in body and body["words"][0]["word"] == " Hello"
    body, _ = format_transcript(RESULT, "verbose_json", ["word", "segment"])
    assert body["segments"] and body["words"]


def test_transcription_form_bounds() -> None:
    f = TranscriptionForm.model_validate({"model": "whisper-1", "language": "", "timestamp_granularities": ["word"]})
    assert f.language is None and f.response_format == "json"
    for bad in ({"model": "m", "temperature": "1.5"}, {"model": "m", "response_format": "docx"},
                {"model": "m", "timestamp_granularities": ["char"]}, {"model": "m" * 300},
                {"model": "m", "language": "e n"}, {"model": "m", "prompt": "x" * 5000}):
        with pytest.raises(ValidationError):
            TranscriptionForm.model_validate(bad)


def test_speech_request_bounds() -> None:
    r = SpeechRequest.model_validate({"model": "tts-1", "input": "hi", "voice": {"id": "alloy"}})
    assert r.voice == "alloy" and r.speed == 1.0 and r.response_format == "mp3"
    for speed in (0.2, 4.01):
        with pytest.raises(ValidationError):
            SpeechRequest.model_validate({"model": "tts-1", "input": "hi", "speed": speed})
    for bad in ({"input": ""}, {"input": "hi", "response_format": "ogg"}, {"input": "hi", "voice": ""},
                {"input": "hi", "stream_format": "chunks"}):
        with pytest.raises(ValidationError):
            SpeechRequest.model_validate({"model": "tts-1", **bad})


def test_wer_helper() -> None:
    assert wer("the cat sat", "The cat, sat!") == 0.0
    assert wer("the cat sat", "the dog sat") == pytest.approx(1 / 3)
    assert wer("a b", "") == 1.0
