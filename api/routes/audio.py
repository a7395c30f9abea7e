"""Audio in OpenAI's shapes (its SDK's `audio.speech` and `audio.transcriptions` work against
alma), and spoken conversations: the user's speech in, the character's reply out in its voice
(the voice turn itself is `chat.voice_turn`).

Every check that can refuse an upload (size, format, duration, silence) runs before a
transcription worker is asked, and a voice turn records nothing until its transcript is known.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, File, Form, Response, UploadFile
from fastapi.responses import PlainTextResponse

from alma.api.deps import AlmaApp, Caller, ChatTurns, CurrentCaller, SpeechEngines
from alma.api.schemas import (
    MAX_REPLY_TOKENS,
    AudioFormat,
    SpeechRequest,
    TranscriptionOut,
    VoiceTurnOut,
)
from alma.chat.voice_turn import Spoken, reply_by_voice
from alma.domain import Alma, NotFound
from alma.voice import NoSpeech

router = APIRouter(tags=["audio"])

_AUDIO_TYPES: dict[str, Any] = {"audio/mpeg": {}, "audio/wav": {}, "audio/ogg": {}}


@router.post(
    "/v1/audio/speech",
    response_class=Response,
    responses={200: {"content": _AUDIO_TYPES}},
)
def speech(
    body: SpeechRequest, caller: CurrentCaller, app: AlmaApp, engines: SpeechEngines
) -> Response:
    """The text spoken. `X-Alma-TTS-Engine` names the engine that spoke; `X-Alma-TTS-Fallback`
    says why the preferred one did not, when it did not."""
    voice = _named_voice(app, caller, body.voice)
    request = body.model_dump(include={"language", "engine"} | (body.model_fields_set & {"speed"}))
    spoken = engines.speak(body.input, [*voice, request], body.response_format)
    return Response(spoken.audio, media_type=spoken.media_type, headers=_tts_headers(spoken))


@router.post(
    "/v1/audio/transcriptions",
    response_model=None,
    responses={200: {"model": TranscriptionOut, "content": {"text/plain": {}}}},
)
async def transcriptions(
    caller: CurrentCaller,
    engines: SpeechEngines,
    file: Annotated[UploadFile, File(description="mp3, wav, ogg/opus, webm, m4a or flac")],
    language: Annotated[
        str | None, Form(min_length=2, max_length=35, description="unset: detected")
    ] = None,
    response_format: Annotated[Literal["json", "text", "verbose_json"], Form()] = "json",
) -> Any:
    """OpenAI's shape; `verbose_json` adds the segments with their times."""
    transcript = await engines.hear(await file.read(), language)
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


@router.post("/v1/instances/{instance_id}/voice")
async def voice_turn(
    instance_id: UUID,
    caller: CurrentCaller,
    chat: ChatTurns,
    engines: SpeechEngines,
    response: Response,
    file: Annotated[UploadFile, File(description="the user's speech")],
    response_format: Annotated[AudioFormat, Form()] = "mp3",
    language: Annotated[
        str | None, Form(min_length=2, max_length=35, description="unset: detected")
    ] = None,
    max_tokens: Annotated[int, Form(ge=1, le=MAX_REPLY_TOKENS)] = 512,
    temperature: Annotated[float, Form(ge=0.0, le=2.0)] = 0.8,
) -> VoiceTurnOut:
    """A chat turn by voice: the transcript is the user's message (recorded with
    `source: voice`), the reply is recorded like any other, and comes back spoken."""
    reply = await reply_by_voice(
        chat,
        engines,
        caller.tenant,
        instance_id,
        await file.read(),
        language,
        response_format,
        max_tokens,
        temperature,
        caller.actor,
    )
    response.headers.update(_tts_headers(reply.spoken))
    return VoiceTurnOut.of(reply, response_format)


def _named_voice(app: Alma, caller: Caller, voice: str) -> list[Mapping[str, Any] | None]:
    """A voice by name, or the voice settings of an instance (over its character's) or of a
    character, by id."""
    try:
        given = UUID(voice)
    except ValueError:
        return [{"voice": voice}]
    try:
        instance = app.instance(caller.tenant, given)
        return [app.character(caller.tenant, instance.character_id).voice, instance.voice]
    except NotFound:
        return [app.character(caller.tenant, given).voice]


def _tts_headers(spoken: Spoken) -> dict[str, str]:
    headers = {"X-Alma-TTS-Engine": spoken.engine, "X-Alma-TTS-Language": spoken.language}
    if spoken.fallback:
        headers["X-Alma-TTS-Fallback"] = spoken.fallback.encode("ascii", "replace").decode()
    return headers
