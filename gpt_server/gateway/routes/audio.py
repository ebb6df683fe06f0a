"""OpenAI audio API: /v1/audio/transcriptions, /v1/audio/translations, /v1/audio/speech.

Uploads are read from the multipart form, bounded, and sent to the ASR worker base64 in
the JSON payload; the worker answers a verbose transcript that is formatted here, or (a
streamed transcript) NDJSON transcript events, sent on as SSE. Speech is relayed as the
worker streams it: the whole file, chunked audio, or the chunks as SSE speech events.
A stream the worker cuts short ends with an error event (SSE) or is cut (raw audio).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from ...errors import BadRequestError, PayloadTooLargeError, UpstreamError
from ...protocol.audio import (
    AUDIO_LIMITS,
    SPEECH,
    TRANSCRIBE,
    TRANSCRIPT_EVENT,
    TRANSLATE,
    SpeechAudioDelta,
    SpeechAudioDone,
    SpeechPayload,
    SpeechRequest,
    TranscribePayload,
    TranscriptionForm,
    TranscriptResult,
    TranscriptTextDone,
)
from ...protocol.kinds import Capability
from ...web.error_handlers import validation_message
from ...web.responses import FastJSONResponse
from ..invoke import (
    call_json,
    call_passthrough,
    call_stream,
    resolve_model,
    worker_chunks,
    worker_events,
    worker_headers,
)
from ..sse import SSEResponse, typed_error
from ..transcripts import format_transcript
from ..workers import WorkerResponse

__all__ = ["router"]

router = APIRouter()

# the multipart form, for /docs (the route reads and validates it itself)
_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "model": {"type": "string"},
                        "language": {"type": "string"},
                        "prompt": {"type": "string"},
                        "response_format": {"type": "string", "enum": ["json", "text", "srt", "verbose_json", "vtt"]},
                        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
                        "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["segment", "word"]}},
                        "stream": {"type": "boolean"},
                    },
                }
            }
        },
    }
}


async def _read_form(request: Request) -> tuple[TranscriptionForm, UploadFile]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequestError("send the audio as multipart/form-data with a 'file' field", param="file")
    try:
        form = await request.form(max_files=1, max_fields=AUDIO_LIMITS.max_form_fields, max_part_size=64 * 1024)
    except MultiPartException as exc:
        raise BadRequestError(f"malformed multipart form: {exc.message}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise BadRequestError("the 'file' field (an audio file) is required", param="file")
    fields: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str) and not k.startswith("timestamp_granularities")}
    grans = form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")
    fields["timestamp_granularities"] = [g for g in grans if isinstance(g, str)]
    try:
        parsed = TranscriptionForm.model_validate(fields)
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        raise BadRequestError(message, param=param) from None
    return parsed, upload


async def _read_upload(upload: UploadFile) -> bytes:
    data = await upload.read(AUDIO_LIMITS.max_upload_bytes + 1)
    await upload.close()
    if len(data) > AUDIO_LIMITS.max_upload_bytes:
        raise PayloadTooLargeError(f"the audio file is larger than {AUDIO_LIMITS.max_upload_bytes} bytes", param="file")
    if not data:
        raise BadRequestError("the audio file is empty", param="file", code="invalid_audio")
    return data


async def _transcribe(request: Request, task: Capability) -> Response:
    form, upload = await _read_form(request)
    form.model = await resolve_model(request, form.model, task)
    data = await _read_upload(upload)
    payload = TranscribePayload(
        file=data,
        language=form.language if task is TRANSCRIBE else None,
        prompt=form.prompt,
        temperature=form.temperature,
        word_timestamps=form.response_format == "verbose_json" and "word" in form.timestamp_granularities,
        stream=form.stream,
    )
    if form.stream:  # transcript.text.delta events, then transcript.text.done, as they come
        resp = await call_stream(request, form.model, task, payload)
        events = worker_events(resp, TRANSCRIPT_EVENT, TranscriptTextDone)
        return _event_stream(events, resp)
    raw = await call_json(request, form.model, task, payload)
    try:
        result = TranscriptResult.model_validate(raw)
    except ValidationError as exc:
        raise UpstreamError("the model worker sent a malformed transcript") from exc
    body, media_type = format_transcript(result, form.response_format, form.timestamp_granularities)
    if isinstance(body, dict):
        return FastJSONResponse(body)
    return Response(body, media_type=media_type)


@router.post("/v1/audio/transcriptions", openapi_extra=_FORM_SCHEMA)
async def create_transcription(request: Request) -> Response:
    return await _transcribe(request, TRANSCRIBE)


@router.post("/v1/audio/translations", openapi_extra=_FORM_SCHEMA)
async def create_translation(request: Request) -> Response:
    return await _transcribe(request, TRANSLATE)


STREAMED_BY_DEFAULT = frozenset({"pcm", "mp3", "opus", "aac"})


@router.post("/v1/audio/speech")
async def create_speech(body: SpeechRequest, request: Request) -> Response:
    mode: Literal["file", "audio", "sse"]  # sse: framed here from the worker's audio chunks
    if body.stream_format == "sse":
        mode = "sse"
    elif body.stream or (body.stream is None and (body.stream_format == "audio" or body.response_format in STREAMED_BY_DEFAULT)):
        mode = "audio"  # as OpenAI: audio goes out as it is made (wav/flac: one file with exact headers)
    else:
        mode = "file"
    payload = SpeechPayload(
        input=body.input, voice=body.voice, response_format=body.response_format, speed=body.speed,
        stream_mode="audio" if mode == "sse" else mode,
    )
    body.model = await resolve_model(request, body.model, SPEECH)
    if mode != "sse":
        return await call_passthrough(request, body.model, SPEECH, payload)
    resp = await call_stream(request, body.model, SPEECH, payload)
    return _event_stream(_speech_events(resp), resp)


def _event_stream(events: AsyncIterator[list[Any]], resp: WorkerResponse) -> SSEResponse:
    """Audio event streams: no [DONE] (the last event is the kind's own done event), typed
    error events."""
    return SSEResponse(events, on_close=resp.close, done=None, error_event=typed_error, headers=worker_headers(resp))


async def _speech_events(resp: WorkerResponse) -> AsyncIterator[list[Any]]:
    """OpenAI's speech stream: a speech.audio.delta per chunk of audio, then speech.audio.done."""
    async for chunk in worker_chunks(resp):
        yield [SpeechAudioDelta(audio=base64.b64encode(chunk).decode("ascii"))]
    yield [SpeechAudioDone()]
