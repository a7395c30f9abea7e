"""Audio in OpenAI's shapes (its SDK's `audio.speech`, `audio.transcriptions` and
`audio.translations` work against alma), and spoken conversations: the user's speech in, the
character's reply out in its voice (the voice turn itself is `chat.voice_turn`).

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
from alma.api.idempotency import RetrySafe
from alma.api.schemas import (
    MAX_REPLY_TOKENS,
    AudioFormat,
    SpeechRequest,
    TranscriptionOut,
    TranslationOut,
    VoiceTurnOut,
)
from alma.chat.turns import DEFAULT_REPLY_TOKENS
from alma.chat.voice_turn import Spoken, reply_by_voice
from alma.domain import Alma, NotFound
from alma.voice import NoSpeech, Options, Speech, Transcript
from alma.voice.audio import FORMATS, READABLE
from alma.voice.subtitles import srt, vtt

router = APIRouter(tags=["audio"])

_AUDIO_TYPES: dict[str, Any] = {media: {} for *_, media in FORMATS.values()}
TextFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]
Upload = Annotated[UploadFile, File(description=READABLE)]
Language = Annotated[str | None, Form(min_length=2, max_length=35, description="unset: detected")]
Prompt = Annotated[
    str | None, Form(max_length=2000, description="text the speech follows: names, spelling")
]
Temperature = Annotated[float, Form(ge=0.0, le=1.0)]
Model = Annotated[str, Form(max_length=100, description="accepted, not used")]


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
    file: Upload,
    language: Language = None,
    prompt: Prompt = None,
    response_format: Annotated[TextFormat, Form()] = "json",
    temperature: Temperature = 0.0,
    model: Model = "whisper-1",
) -> Any:
    """OpenAI's shape; `verbose_json` adds the segments with their times, `srt` and `vtt` give
    them as subtitles."""
    options = Options(prompt=prompt, temperature=temperature)
    transcript = await _heard(engines, file, language, options)
    out = TranscriptionOut(
        text=transcript.text, language=transcript.language, duration=transcript.duration
    )
    return _written(transcript, out, response_format, "transcribe")


@router.post(
    "/v1/audio/translations",
    response_model=None,
    responses={200: {"model": TranslationOut, "content": {"text/plain": {}}}},
)
async def translations(
    caller: CurrentCaller,
    engines: SpeechEngines,
    file: Upload,
    prompt: Prompt = None,
    response_format: Annotated[TextFormat, Form()] = "json",
    temperature: Temperature = 0.0,
    model: Model = "whisper-1",
    language: Language = None,
) -> Any:
    """OpenAI's shape: speech in any language Whisper knows, as English text. `language` (alma's:
    the language spoken) helps when the clip is too short for it to be told."""
    options = Options(translate=True, prompt=prompt, temperature=temperature)
    transcript = await _heard(engines, file, language, options)
    out = TranslationOut(
        text=transcript.text,
        language="en",
        duration=transcript.duration,
        spoken_language=transcript.language,
    )
    return _written(transcript, out, response_format, "translate")


async def _heard(
    engines: Speech, file: UploadFile, language: str | None, options: Options
) -> Transcript:
    transcript = await engines.hear(await file.read(), language, options)
    if not transcript.text:
        raise NoSpeech("no speech was recognized in the audio")
    return transcript


def _written(
    transcript: Transcript, out: TranscriptionOut, response_format: TextFormat, task: str
) -> Any:
    """The text in the asked format: plain, subtitles, or JSON (verbose: with the segments)."""
    if response_format == "text":
        return PlainTextResponse(transcript.text)
    if response_format == "srt":
        return PlainTextResponse(srt(transcript.segments))
    if response_format == "vtt":
        return PlainTextResponse(vtt(transcript.segments))
    if response_format == "json":
        return out
    segments = [
        {"id": n, "start": s.start, "end": s.end, "text": s.text}
        for n, s in enumerate(transcript.segments)
    ]
    return {"task": task, **out.model_dump(), "segments": segments}


@router.post("/v1/instances/{instance_id}/voice", dependencies=[RetrySafe])
async def voice_turn(
    instance_id: UUID,
    caller: CurrentCaller,
    chat: ChatTurns,
    engines: SpeechEngines,
    response: Response,
    file: Annotated[UploadFile, File(description="the user's speech")],
    response_format: Annotated[AudioFormat, Form()] = "mp3",
    language: Language = None,
    max_tokens: Annotated[int, Form(ge=1, le=MAX_REPLY_TOKENS)] = DEFAULT_REPLY_TOKENS,
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
