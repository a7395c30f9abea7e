"""The speech engines of one process, built from the settings: nothing loads until first use."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from anyio import to_thread

from alma.settings import Settings
from alma.voice.audio import Clip, NoSpeech, check_size, decode
from alma.voice.stt import Options, Transcriber, Transcript, UnknownLanguage, whisper_language
from alma.voice.tts import Speaker, Spoken, VoiceSettings


@dataclass
class Speech:
    speaker: Speaker
    transcriber: Transcriber
    max_bytes: int
    max_seconds: float

    @classmethod
    def of(cls, settings: Settings) -> Speech:
        return cls(
            speaker=Speaker(
                settings.tts_engine,
                settings.tts_language,
                settings.tts_online_timeout_s,
                settings.tts_online_retry_s,
            ),
            transcriber=Transcriber(
                settings.stt_model,
                settings.model_cache() / "speech",
                workers=settings.transcription_workers(),
                threads=settings.stt_threads,
                beam_size=settings.stt_beam_size,
                max_pending=settings.stt_max_pending,
            ),
            max_bytes=settings.audio_max_bytes,
            max_seconds=settings.audio_max_seconds,
        )

    def clip(self, data: bytes) -> Clip:
        """An upload checked and decoded for transcription (size, format, duration)."""
        check_size(len(data), self.max_bytes)
        return decode(data, self.max_seconds)

    async def hear(
        self,
        data: bytes,
        language: str | None = None,
        options: Options | None = None,
        likely: str | None = None,
    ) -> Transcript:
        """What an upload says, in `language` or the one detected (or in English, translated);
        in `likely` when the detection is unsure. Every check that can refuse it (language,
        size, format and duration, silence) runs before a transcription worker is asked;
        decoding runs off the event loop and outside those workers."""
        code = whisper_language(language) if language else None
        options = replace(options or Options(), likely_language=_known(likely))
        clip = await to_thread.run_sync(self.clip, data)
        if clip.silent:
            raise NoSpeech("the audio is silent")
        return await asyncio.wrap_future(self.transcriber.submit(clip, code, options))

    def speak(
        self, text: str, voice: Sequence[Mapping[str, Any] | None], response_format: str
    ) -> Spoken:
        """The text spoken in a voice given as layers (a character's, an instance's, a
        request's), each over the ones before it."""
        settings = VoiceSettings()
        for layer in voice:
            settings = settings.over(layer)
        return self.speaker.speak(text, settings, response_format)

    def close(self) -> None:
        self.speaker.close()
        self.transcriber.close()


def _known(language: str | None) -> str | None:
    """Whisper's code for a language it knows; None for none or one it does not."""
    try:
        return whisper_language(language) if language else None
    except UnknownLanguage:
        return None
