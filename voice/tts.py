"""Text to speech behind one interface: gTTS (Google's service, the product's named engine) and
espeak-ng (offline, always there). When the preferred engine cannot be reached, the offline one
answers and says why (`Spoken.fallback`)."""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from gtts import gTTS
from gtts.lang import tts_langs

from alma.language import guess_language
from alma.voice import espeak
from alma.voice.audio import AudioError, Clip, decode, encode, media_type

ENGINES = ("gtts", "espeak")
MAX_INPUT = 4096
# OpenAI's voice names, so its clients work unchanged, each given an espeak-ng variant.
OPENAI_VOICES = {
    "alloy": "m1",
    "ash": "m3",
    "ballad": "m5",
    "cedar": "m8",
    "coral": "f2",
    "echo": "m2",
    "fable": "m4",
    "marin": "f5",
    "nova": "f3",
    "onyx": "m7",
    "sage": "f4",
    "shimmer": "f1",
    "verse": "m6",
}


# espeak-ng's bare `en` is British; OpenAI's voices and most users' expectations are American.
_ESPEAK_ALIASES = {"en": "en-us"}
_PAUSE = np.zeros(2205, np.int16)  # a tenth of a second: what an empty reply sounds like


class UnknownVoice(AudioError):
    """A voice, language or engine no engine here has."""


class Unreachable(Exception):
    """An online engine did not answer."""


@dataclass(frozen=True)
class VoiceSettings:
    """How a character speaks: every field optional, later layers override earlier ones."""

    language: str | None = None
    engine: str | None = None
    voice: str | None = None
    speed: float = 1.0

    def over(self, layer: Mapping[str, Any] | None) -> VoiceSettings:
        """These settings with the non-null fields of `layer` (a character's or instance's
        voice, or a request's) on top."""
        given = {k: v for k, v in (layer or {}).items() if v is not None and k in _FIELDS}
        return replace(self, **given)


_FIELDS = frozenset(VoiceSettings.__dataclass_fields__)


@dataclass(frozen=True)
class Spoken:
    audio: bytes
    response_format: str
    media_type: str
    engine: str
    language: str
    fallback: str | None  # why the preferred engine did not answer; None when it did


def espeak_language(language: str) -> str:
    """espeak-ng's tag for a language (`es-MX` falls back to `es`); UnknownVoice if none."""
    known = espeak.languages()
    tag = language.strip().lower().replace("_", "-")
    tag = _ESPEAK_ALIASES.get(tag, tag)
    while tag:
        if tag in known:
            return known[tag]
        tag = tag.rpartition("-")[0]
    raise UnknownVoice(f"no voice speaks the language {language!r}", {"field": "language"})


def known_voices() -> list[str]:
    """Every voice name `espeak_variant` takes: OpenAI's, then espeak-ng's variants."""
    return sorted(OPENAI_VOICES) + sorted(espeak.variants() - OPENAI_VOICES.keys())


def language_pattern() -> str:
    """A pattern of the tags `espeak_language` takes: a known tag (in lower case, `-` or `_`
    between its parts), then any subtags (`es-MX`), which it drops until the tag is known."""
    tags = sorted({*espeak.languages(), *_ESPEAK_ALIASES}, key=lambda tag: (-len(tag), tag))
    known = "|".join(re.escape(tag).replace(r"\-", "[-_]") for tag in tags)
    return rf"^(?:{known})(?:[-_][A-Za-z0-9]+)*$"


def espeak_variant(voice: str | None) -> str | None:
    """The espeak-ng variant of a voice name: OpenAI's names, or a variant's own (`f3`)."""
    if voice is None:
        return None
    if voice in OPENAI_VOICES:
        return OPENAI_VOICES[voice]
    if voice in espeak.variants():
        return voice
    names = ", ".join(sorted(OPENAI_VOICES))
    raise UnknownVoice(
        f"unknown voice {voice!r}: use one of {names}, an espeak-ng variant (f1-f5, m1-m8, ...) "
        "or the id of an instance or character",
        {"field": "voice"},
    )


def check(settings: VoiceSettings) -> VoiceSettings:
    """Refuses settings no engine can speak, before anything is recorded or synthesized."""
    if settings.engine is not None and settings.engine not in ENGINES:
        raise UnknownVoice(f"engine must be one of {', '.join(ENGINES)}", {"field": "engine"})
    if settings.language is not None:
        espeak_language(settings.language)
    espeak_variant(settings.voice)
    if not 0.25 <= settings.speed <= 4.0:
        raise UnknownVoice("speed must be from 0.25 to 4.0", {"field": "speed"})
    return settings


class Speaker:
    """Speaks with the preferred engine, or espeak-ng when that fails. After an online failure
    the online engine is left alone for `retry_after_s`, so requests do not each wait on it."""

    def __init__(
        self,
        preferred: str = "gtts",
        default_language: str = "en",
        online_timeout_s: float = 5.0,
        retry_after_s: float = 60.0,
    ) -> None:
        self.preferred = preferred
        self.default_language = default_language
        self.online_timeout_s = online_timeout_s
        self.retry_after_s = retry_after_s
        self._online = ThreadPoolExecutor(max_workers=2, thread_name_prefix="alma-gtts")
        self._lock = threading.Lock()
        self._down: tuple[float, str] | None = None  # (since, why)

    def speak(self, text: str, settings: VoiceSettings, response_format: str) -> Spoken:
        settings = check(settings)
        language = settings.language or guess_language(text, self.default_language)
        tag = espeak_language(language)
        variant = espeak_variant(settings.voice)
        fallback = None
        if (settings.engine or self.preferred) == "gtts":
            try:
                clip = self._gtts(text, language, settings.speed)
                return self._spoken(clip, response_format, "gtts", language, None)
            except Unreachable as error:
                fallback = f"gtts: {error}"
        wpm = min(450, max(80, round(espeak.DEFAULT_WPM * settings.speed)))
        voice = f"{tag}+{variant}" if variant else tag
        samples = espeak.espeak().synthesize(text, voice, wpm) if text.strip() else _PAUSE
        clip = Clip((samples / 32768).astype(np.float32), espeak.espeak().rate)
        return self._spoken(clip, response_format, "espeak", language, fallback)

    def _spoken(
        self, clip: Clip, response_format: str, engine: str, language: str, fallback: str | None
    ) -> Spoken:
        audio = encode(clip, response_format)
        return Spoken(
            audio, response_format, media_type(response_format), engine, language, fallback
        )

    def _gtts(self, text: str, language: str, speed: float) -> Clip:
        with self._lock:
            if self._down and time.monotonic() - self._down[0] < self.retry_after_s:
                raise Unreachable(f"{self._down[1]} (not retried for {self.retry_after_s:g} s)")
        lang = _gtts_language(language)
        if lang is None:
            raise Unreachable(f"it does not speak {language!r}")
        job = self._online.submit(_google, text, lang, slow=speed < 0.8)
        try:
            mp3 = job.result(timeout=self.online_timeout_s)
        except FutureTimeout:
            self._mark_down(f"no answer within {self.online_timeout_s:g} s")
            raise Unreachable(f"no answer within {self.online_timeout_s:g} s") from None
        except Exception as error:  # gTTSError, or anything its HTTP client raised
            why = str(error).split(".")[0] or type(error).__name__
            self._mark_down(why)
            raise Unreachable(why) from None
        with self._lock:
            self._down = None
        return decode(mp3, max_seconds=float("inf"), rate=24_000)

    def _mark_down(self, why: str) -> None:
        with self._lock:
            self._down = (time.monotonic(), why)

    def close(self) -> None:
        self._online.shutdown(wait=False, cancel_futures=True)


def _gtts_language(language: str) -> str | None:
    known = {tag.lower(): tag for tag in tts_langs()}
    tag = language.lower().replace("_", "-")
    return known.get(tag) or known.get(tag.partition("-")[0])


def _google(text: str, language: str, slow: bool) -> bytes:
    buffer = io.BytesIO()
    gTTS(text, lang=language, slow=slow).write_to_fp(buffer)
    return buffer.getvalue()
