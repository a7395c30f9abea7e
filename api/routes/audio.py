"""Audio in OpenAI's shapes (its SDK's `audio.speech` and `audio.transcriptions` work against
alma), and spoken conversations: the user's speech in, the character's reply out in its voice.

Every check that can refuse an upload (size, format, duration, silence) runs before a
transcription worker is asked, and a voice turn records nothing until its transcript is known.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import replace
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, File, Form, Response, UploadFile
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from alma.api.deps import Caller, CurrentCaller, Svc
from alma.api.errors import ApiError
from alma.api.schemas import ChatResponse, MemoryUsed, TurnOut, Usage
from alma.api.services import Services
from alma.domain import Instance, NotFound
from alma.voice import Clip, NoSpeech, Speech, Spoken, VoiceSettings
from alma.voice.stt import whisper_language

router = APIRouter(tags=["audio"])

AudioFormat = Literal["mp3", "wav", "opus"]
_AUDIO_TYPES: dict[str, Any] = {"audio/mpeg": {}, "audio/wav": {}, "audio/ogg": {}}


class SpeechRequest(BaseModel):
    """OpenAI's request, with alma's `language` and `engine`; other OpenAI fields are accepted."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(default="tts-1", max_length=100, description="accepted, not used")
    input: str = Field(min_length=1, max_length=4096, pattern=r"\S", examples=["¡Hola, corazón!"])
    voice: str = Field(
        default="alloy",
        max_length=100,
        description="OpenAI's voice names, an espeak-ng variant (f1-f5, m1-m8), or the id of an "
        "instance or character to speak with its voice settings",
    )
    response_format: AudioFormat = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    language: str | None = Field(default=None, min_length=2, max_length=35, examples=["es"])
    engine: Literal["gtts", "espeak"] | None = None


@router.post(
    "/v1/audio/speech",
    response_class=Response,
    responses={200: {"content": _AUDIO_TYPES}},
)
def speech(body: SpeechRequest, caller: CurrentCaller, svc: Svc) -> Response:
    """The text spoken. `X-Alma-TTS-Engine` names the engine that spoke; `X-Alma-TTS-Fallback`
    says why the preferred one did not, when it did not."""
    if "\x00" in body.input:
        raise ApiError(422, "invalid_request", "input must not contain NUL", {"field": "input"})
    settings = _named_voice(svc, caller, body.voice)
    request = body.model_dump(include={"language", "engine"} | (body.model_fields_set & {"speed"}))
    spoken = svc.speech().speaker.speak(body.input, settings.over(request), body.response_format)
    return Response(spoken.audio, media_type=spoken.media_type, headers=_tts_headers(spoken))


class TranscriptionOut(BaseModel):
    text: str
    language: str
    duration: float


@router.post(
    "/v1/audio/transcriptions",
    response_model=None,
    responses={200: {"model": TranscriptionOut, "content": {"text/plain": {}}}},
)
async def transcriptions(
    caller: CurrentCaller,
    svc: Svc,
    file: Annotated[UploadFile, File(description="mp3, wav, ogg/opus, webm, m4a or flac")],
    language: Annotated[
        str | None, Form(min_length=2, max_length=35, description="unset: detected")
    ] = None,
    response_format: Annotated[Literal["json", "text", "verbose_json"], Form()] = "json",
) -> Any:
    """OpenAI's shape; `verbose_json` adds the segments with their times."""
    speech = svc.speech()
    code = whisper_language(language) if language else None
    clip = await _clip(speech, file)
    transcript = await asyncio.wrap_future(speech.transcriber.submit(clip, code))
    if not transcript.text:
        raise NoSpeech("no speech was recognized in the audio")
    if response_format == "text":
        return PlainTextResponse(transcript.text)
    out = TranscriptionOut(
        text=transcript.text, language=transcript.language, duration=transcript.duration
    )
    if response_format == "json":
        return out
    segments = [
        {"id": n, "start": s.start, "end": s.end, "text": s.text}
        for n, s in enumerate(transcript.segments)
    ]
    return {"task": "transcribe", **out.model_dump(), "segments": segments}


class VoiceTurnOut(BaseModel):
    transcript: str = Field(description="what the user said, as recorded")
    language: str = Field(description="of the user's speech: given, or detected")
    reply: str
    audio_base64: str = Field(description="the reply spoken in the character's voice")
    audio_format: AudioFormat
    tts_engine: str
    tts_fallback: str | None
    turn: TurnOut
    model: str
    memories_used: list[MemoryUsed]
    usage: Usage


@router.post("/v1/instances/{instance_id}/voice")
async def voice_turn(
    instance_id: UUID,
    caller: CurrentCaller,
    svc: Svc,
    response: Response,
    file: Annotated[UploadFile, File(description="the user's speech")],
    response_format: Annotated[AudioFormat, Form()] = "mp3",
    language: Annotated[
        str | None, Form(min_length=2, max_length=35, description="unset: detected")
    ] = None,
    max_tokens: Annotated[int, Form(ge=1, le=4096)] = 512,
    temperature: Annotated[float, Form(ge=0.0, le=2.0)] = 0.8,
) -> VoiceTurnOut:
    """A chat turn by voice: the transcript is the user's message (recorded with
    `source: voice`), the reply is recorded like any other, and comes back spoken."""
    instance = await run_in_threadpool(svc.app.instance, caller.tenant, instance_id)
    settings = await run_in_threadpool(_instance_voice, svc, caller.tenant, instance)
    speech = svc.speech()
    code = whisper_language(language) if language else None
    clip = await _clip(speech, file)
    transcript = await asyncio.wrap_future(speech.transcriber.submit(clip, code))
    if not transcript.text:
        raise NoSpeech("no speech was recognized in the audio; nothing was recorded")
    turn = await run_in_threadpool(
        svc.chat.prepare, caller.tenant, instance_id, transcript.text, max_tokens, temperature
    )
    marker = {"source": "voice", "language": transcript.language, "seconds": clip.seconds}
    result = await run_in_threadpool(
        svc.chat.complete, replace(turn, metadata=marker), caller.actor
    )
    spoken = await run_in_threadpool(
        speech.speaker.speak,
        result.reply,
        replace(settings, language=settings.language or transcript.language),
        response_format,
    )
    response.headers.update(_tts_headers(spoken))
    chat = ChatResponse.of(result)
    return VoiceTurnOut(
        transcript=transcript.text,
        language=transcript.language,
        reply=result.reply,
        audio_base64=base64.b64encode(spoken.audio).decode(),
        audio_format=response_format,
        tts_engine=spoken.engine,
        tts_fallback=spoken.fallback,
        turn=chat.turn,
        model=chat.model,
        memories_used=chat.memories_used,
        usage=chat.usage,
    )


async def _clip(speech: Speech, file: UploadFile) -> Clip:
    """The upload checked (size first, then format and duration, then silence) and decoded,
    off the event loop and outside the transcription workers."""
    speech.check_size(file.size or 0)
    data = await file.read()
    clip = await run_in_threadpool(speech.clip, data)
    if clip.silent:
        raise NoSpeech("the audio is silent")
    return clip


def _named_voice(svc: Services, caller: Caller, voice: str) -> VoiceSettings:
    """A voice by name, or the voice settings of an instance or character by id."""
    try:
        given = UUID(voice)
    except ValueError:
        return VoiceSettings(voice=voice)
    try:
        return _instance_voice(svc, caller.tenant, svc.app.instance(caller.tenant, given))
    except NotFound:
        character = svc.app.character(caller.tenant, given)
        return VoiceSettings().over(character.voice)


def _instance_voice(svc: Services, tenant: str, instance: Instance) -> VoiceSettings:
    """The character's voice with the instance's overrides on top."""
    character = svc.app.character(tenant, instance.character_id)
    return VoiceSettings().over(character.voice).over(instance.voice)


def _tts_headers(spoken: Spoken) -> dict[str, str]:
    headers = {"X-Alma-TTS-Engine": spoken.engine, "X-Alma-TTS-Language": spoken.language}
    if spoken.fallback:
        headers["X-Alma-TTS-Fallback"] = spoken.fallback.encode("ascii", "replace").decode()
    return headers
