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
from alma.voice.stt import Busy, Transcriber, Transcript, UnknownLanguage
from alma.voice.tts import Speaker, Spoken, UnknownVoice, VoiceSettings

__all__ = [
    "AudioError",
    "AudioTooLarge",
    "AudioTooLong",
    "BadAudio",
    "Busy",
    "Clip",
    "NoSpeech",
    "NotAudio",
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
