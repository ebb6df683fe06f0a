"""OpenAI audio API: wire schemas and transcript formatting (json, text, srt, vtt, verbose_json).

Transcription forms arrive as multipart; the gateway reads the form and validates the
fields with ``TranscriptionForm``. Speech requests are JSON (``SpeechRequest``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from .kinds import Kind, declare_capability, declare_kind
from .openai import ModelName, OpenAIBaseModel
from .worker import WireBytes

__all__ = [
    "AUDIO_LIMITS",
    "OPENAI_VOICES",
    "TranscriptionForm",
    "SpeechRequest",
    "SpeechFormat",
    "StreamMode",
    "TranscribePayload",
    "SpeechPayload",
    "TRANSCRIBE",
    "TRANSLATE",
    "SPEECH",
    "TranscriptResult",
    "TranscriptTextDelta",
    "TranscriptTextDone",
    "TranscriptEvent",
    "TRANSCRIPT_EVENT",
    "SpeechAudioDelta",
    "SpeechAudioDone",
    "Segment",
    "Word",
]


class _AudioLimits:
    max_upload_bytes = 25 * 1024 * 1024  # OpenAI's limit; serve_args.max_body_bytes also applies
    max_prompt_chars = 4096
    max_input_chars = 4096  # TTS input; a model's max_input_chars may lower/raise it up to 100k
    max_form_fields = 32


AUDIO_LIMITS = _AudioLimits()

OPENAI_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar",
)

TranscriptFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]


class TranscriptionForm(BaseModel):
    """The non-file fields of /v1/audio/transcriptions and /v1/audio/translations."""

    model_config = ConfigDict(extra="ignore")

    model: ModelName = ""
    language: str | None = Field(None, min_length=2, max_length=16, pattern=r"^[A-Za-z_-]+$")
    prompt: str | None = Field(None, max_length=AUDIO_LIMITS.max_prompt_chars)
    response_format: TranscriptFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    timestamp_granularities: list[Literal["segment", "word"]] = Field(default_factory=list, max_length=2)
    stream: bool = False

    @field_validator("language", "prompt", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v


SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
# how synthesized speech travels back from the worker: one file, or chunked audio as it is made
# (the gateway frames SSE events itself from the chunks)
StreamMode = Literal["file", "audio"]


class SpeechRequest(OpenAIBaseModel):
    model: ModelName = ""
    input: str = Field(min_length=1, max_length=100_000)
    voice: str | dict[str, Any] = "alloy"
    instructions: str | None = Field(None, max_length=AUDIO_LIMITS.max_prompt_chars)
    response_format: SpeechFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] | None = None
    stream: bool | None = Field(
        None,
        description="extension: true = chunked audio as it is synthesized, false = one file; left out: chunked "
        "for pcm, mp3, opus and aac, one file for wav and flac (unless stream_format says audio)",
    )

    @field_validator("voice")
    @classmethod
    def _voice_name(cls, v: Any) -> Any:
        if isinstance(v, dict):  # {"id": "voice_..."} custom voice objects
            vid = v.get("id")
            if not isinstance(vid, str) or not vid:
                raise ValueError("a voice object needs a string 'id'")
            return vid
        if not v or len(v) > 256:
            raise ValueError("voice must be a non-empty name of at most 256 characters")
        return v


class TranscribePayload(BaseModel):
    """What the gateway sends a worker for ``transcribe`` and ``translate``."""

    model_config = ConfigDict(extra="forbid")

    file: WireBytes = Field(description="the audio file's bytes (base64 on the wire)")
    language: str | None = Field(None, min_length=2, max_length=16, pattern=r"^[A-Za-z_-]+$")
    prompt: str | None = Field(None, max_length=AUDIO_LIMITS.max_prompt_chars)
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    word_timestamps: bool = False
    stream: bool = False

    @field_validator("file")
    @classmethod
    def _audio_size(cls, v: bytes) -> bytes:
        if not v:
            raise ValueError("the audio file is empty")
        if len(v) > AUDIO_LIMITS.max_upload_bytes:
            raise ValueError(f"the audio file is larger than {AUDIO_LIMITS.max_upload_bytes} bytes")
        return v


class SpeechPayload(BaseModel):
    """What the gateway sends a worker for ``speech``."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(min_length=1, max_length=100_000)
    voice: str = Field("alloy", min_length=1, max_length=256)
    response_format: SpeechFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_mode: StreamMode = "file"


TRANSCRIBE = declare_capability("transcribe", TranscribePayload, kinds=("asr",))
TRANSLATE = declare_capability("translate", TranscribePayload, kinds=("asr",))
SPEECH = declare_capability("speech", SpeechPayload, kinds=("tts",))

declare_kind(
    Kind(
        name="asr",
        label="speech-to-text",
        default_engine="faster_whisper",
        description="speech to text (/v1/audio/transcriptions, /v1/audio/translations)",
        legacy_names=("funasr", "whisper"),
    )
)
declare_kind(
    Kind(
        name="tts",
        label="text-to-speech",
        default_engine="piper",
        description="text to speech (/v1/audio/speech)",
        legacy_names=("spark_tts", "cosyvoice"),
    )
)


class Word(BaseModel):
    word: str
    start: float
    end: float


class Segment(BaseModel):
    id: int
    seek: int = 0
    start: float
    end: float
    text: str
    tokens: list[int] = Field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


class TranscriptResult(BaseModel):
    """What an ASR worker returns (always the verbose form; the gateway formats it)."""

    task: Literal["transcribe", "translate"] = "transcribe"
    language: str
    duration: float
    text: str
    segments: list[Segment] = Field(default_factory=list)
    words: list[Word] | None = None


# ---- stream events ------------------------------------------------------------------------
# A streamed transcript goes worker → gateway as NDJSON of these events (validated at the
# gateway), and gateway → client as SSE; streamed speech goes worker → gateway as raw audio
# and gateway → client as SSE of the speech events.


class TranscriptTextDelta(BaseModel):
    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str


class TranscriptTextDone(BaseModel):
    """The final event of a transcript stream."""

    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str


TranscriptEvent = Annotated[TranscriptTextDelta | TranscriptTextDone, Field(discriminator="type")]
TRANSCRIPT_EVENT: TypeAdapter[TranscriptTextDelta | TranscriptTextDone] = TypeAdapter(TranscriptEvent)


class SpeechAudioDelta(BaseModel):
    type: Literal["speech.audio.delta"] = "speech.audio.delta"
    audio: str  # base64 of the next bytes of the audio file


class SpeechAudioDone(BaseModel):
    """The final event of a speech stream."""

    type: Literal["speech.audio.done"] = "speech.audio.done"
