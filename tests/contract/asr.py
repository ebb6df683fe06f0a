"""The speech-to-text suite (kind ``asr``: transcribe + translate), through a real server and
the openai SDK, on English speech made by the packaged Piper voice called directly."""

from __future__ import annotations

import functools
from typing import ClassVar

import httpx
import openai
import pytest

from tests.audio_helpers import SENTENCE, parse_srt, parse_vtt, speak_in_process, tone_wav, wer
from tests.contract.base import Suite, covers
from tests.helpers import Server
from tests.openai_shapes import assert_openai_shape

__all__ = ["AsrSuite", "SENTENCE"]

@functools.cache
def _speech() -> bytes:
    return speak_in_process(SENTENCE)


class AsrSuite(Suite):
    """An engine subclass sets ``model`` (an English speech recogniser)."""

    kind = "asr"
    model: ClassVar[str] = "asr"
    max_wer: ClassVar[float] = 0.2

    @property
    def speech(self) -> tuple[str, bytes]:
        return ("speech.wav", _speech())

    @covers("transcribe")
    def test_transcribes_real_speech(self, client: openai.OpenAI) -> None:
        out = client.audio.transcriptions.create(model=self.model, file=self.speech)
        assert wer(SENTENCE, out.text) <= self.max_wer, out.text
        text = client.audio.transcriptions.create(model=self.model, file=self.speech, response_format="text")
        assert isinstance(text, str) and text.strip() == out.text.strip()

    @covers("transcribe")
    def test_subtitles_and_verbose_json(self, client: openai.OpenAI) -> None:
        cues = parse_srt(client.audio.transcriptions.create(model=self.model, file=self.speech, response_format="srt"))
        assert cues and wer(SENTENCE, " ".join(c[2] for c in cues)) <= self.max_wer
        vtt = parse_vtt(client.audio.transcriptions.create(model=self.model, file=self.speech, response_format="vtt"))
        assert [c[:2] for c in vtt] == [c[:2] for c in cues]
        verbose = client.audio.transcriptions.create(
            model=self.model, file=self.speech, response_format="verbose_json",
            timestamp_granularities=["segment", "word"], language="en", temperature=0.0,
        )
        assert verbose.language == "en" and 2.0 < verbose.duration < 10.0
        assert verbose.segments and all(0 <= s.start <= s.end <= verbose.duration + 0.5 for s in verbose.segments)
        assert verbose.words and len(verbose.words) >= 8
        starts = [w.start for w in verbose.words]
        assert starts == sorted(starts) and all(w.start <= w.end for w in verbose.words)

    @covers("transcribe", "translate")
    def test_responses_match_the_openai_schema(self, server: Server) -> None:
        for route, fmt, schema in (
            ("transcriptions", "json", "CreateTranscriptionResponseJson"),
            ("transcriptions", "verbose_json", "CreateTranscriptionResponseVerboseJson"),
            ("translations", "json", "CreateTranslationResponseJson"),
            ("translations", "verbose_json", "CreateTranslationResponseVerboseJson"),
        ):
            data = {"model": self.model, "response_format": fmt}
            if route == "transcriptions" and fmt == "verbose_json":
                data["timestamp_granularities[]"] = "word"
            r = httpx.post(
                f"{server.base_url}/v1/audio/{route}", data=data, files={"file": self.speech}, headers=server.headers(), timeout=120
            )
            assert r.status_code == 200, r.text
            assert_openai_shape(schema, r.json())

    @covers("transcribe")
    def test_streamed_transcription(self, client: openai.OpenAI) -> None:
        events = list(client.audio.transcriptions.create(model=self.model, file=self.speech, stream=True))
        assert events[-1].type == "transcript.text.done"
        deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
        assert deltas and "".join(deltas).strip() == events[-1].text
        assert wer(SENTENCE, events[-1].text) <= self.max_wer

    @covers("translate")
    @pytest.mark.filterwarnings("ignore::DeprecationWarning")
    def test_translation_into_english(self, client: openai.OpenAI) -> None:
        out = client.audio.translations.create(model=self.model, file=self.speech)
        assert wer(SENTENCE, out.text) <= self.max_wer, out.text

    @covers("transcribe", "translate")
    @pytest.mark.filterwarnings("ignore::DeprecationWarning")
    def test_bad_audio_is_400_with_param(self, client: openai.OpenAI) -> None:
        for name, data in [("x.wav", b"RIFF....WAVEnot really audio" * 20), ("x.mp3", bytes(range(256)) * 10), ("x.wav", b"")]:
            with pytest.raises(openai.BadRequestError) as exc:
                client.audio.transcriptions.create(model=self.model, file=(name, data))
            assert exc.value.body["param"] == "file", exc.value.body
        with pytest.raises(openai.BadRequestError) as exc:
            client.audio.translations.create(model=self.model, file=("x.wav", b"junk" * 100))
        assert exc.value.body["param"] == "file"

    @covers("transcribe")
    def test_bad_requests_are_400_with_param(self, server: Server, client: openai.OpenAI) -> None:
        with pytest.raises(openai.BadRequestError) as exc:
            client.audio.transcriptions.create(model=self.model, file=("t.wav", tone_wav(0.3)), response_format="docx")
        assert exc.value.body["param"] == "response_format"
        url = f"{server.base_url}/v1/audio/transcriptions"
        r = httpx.post(url, data={"model": self.model}, files={"other": ("a.txt", b"x")}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "file"
        r = httpx.post(url, files={"file": ("t.wav", tone_wav(0.2))}, timeout=60)
        assert r.status_code == 200, r.text  # no model: the only speech-to-text model
        with pytest.raises(openai.BadRequestError) as exc:  # a recogniser does not speak
            client.audio.speech.create(model=self.model, voice="alloy", input="Hi.")
        assert exc.value.body["param"] == "model"
