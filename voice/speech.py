"""The speech engines of one process, built from the settings: nothing loads until first use."""

from __future__ import annotations

from dataclasses import dataclass

from alma.settings import Settings
from alma.voice.audio import Clip, check_size, decode
from alma.voice.stt import Transcriber
from alma.voice.tts import Speaker


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

    def check_size(self, size: int) -> None:
        check_size(size, self.max_bytes)

    def clip(self, data: bytes) -> Clip:
        """An upload checked and decoded for transcription (size, format, duration)."""
        self.check_size(len(data))
        return decode(data, self.max_seconds)

    def close(self) -> None:
        self.speaker.close()
        self.transcriber.close()
