"""Speech: text to speech (gTTS, espeak-ng offline) and speech to text (faster-whisper)."""

from alma.voice.audio import (
    AudioError,
    AudioTooLarge,
    AudioTooLong,
    BadAudio,
    Clip,
    NoSpeech,
    NotAudio,
    check_size,
    decode,
)
from alma.voice.speech import Speech
from alma.voice.stt import Busy, CannotTranslate, Options, Transcriber, Transcript, UnknownLanguage
from alma.voice.tts import Speaker, Spoken, UnknownVoice, VoiceSettings

__all__ = [
    "AudioError",
    "AudioTooLarge",
    "AudioTooLong",
    "BadAudio",
    "Busy",
    "CannotTranslate",
    "Clip",
    "NoSpeech",
    "NotAudio",
    "Options",
    "Speaker",
    "Speech",
    "Spoken",
    "Transcriber",
    "Transcript",
    "UnknownLanguage",
    "UnknownVoice",
    "VoiceSettings",
    "check_size",
    "decode",
]
