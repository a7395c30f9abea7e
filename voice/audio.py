"""Audio in and out through PyAV: uploads decoded to mono samples with every check a bad file
needs (not audio, empty, corrupt or truncated, too long, silent), and speech encoded to mp3,
wav, opus (Ogg), flac, aac (ADTS) or pcm (raw samples, as OpenAI gives them)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt

WHISPER_RATE = 16_000
# response_format: (container, codec, sample rate of the encoder, media type)
FORMATS = {
    "mp3": ("mp3", "libmp3lame", 22_050, "audio/mpeg"),
    "wav": ("wav", "pcm_s16le", None, "audio/wav"),
    "opus": ("ogg", "libopus", 48_000, "audio/ogg"),
    "flac": ("flac", "flac", None, "audio/flac"),
    "aac": ("adts", "aac", 24_000, "audio/aac"),
    # OpenAI's pcm: 16-bit little-endian mono samples at 24 kHz, no header.
    "pcm": ("s16le", "pcm_s16le", 24_000, "audio/pcm"),
}
READABLE = "mp3, wav, ogg/opus, webm, m4a, aac or flac"
SILENCE_RMS = 0.003  # about -50 dBFS: below it there is nothing to transcribe


class AudioError(Exception):
    """An upload or a request that cannot become speech or text; api/errors.py maps each kind."""

    def __init__(self, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotAudio(AudioError):
    """Not a file PyAV can read as audio (text, an image, random bytes)."""


class BadAudio(AudioError):
    """Audio that is empty, corrupt or truncated."""


class AudioTooLarge(AudioError):
    """Over the upload size limit."""


class AudioTooLong(AudioError):
    """Over the duration limit."""


class NoSpeech(AudioError):
    """Silence, or nothing a person said."""


@dataclass(frozen=True)
class Clip:
    """Mono float samples in [-1, 1]."""

    samples: npt.NDArray[np.float32]
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate

    @property
    def silent(self) -> bool:
        return float(np.sqrt(np.mean(np.square(self.samples)))) < SILENCE_RMS


def check_size(size: int, limit: int) -> None:
    if size > limit:
        raise AudioTooLarge(
            f"the audio file is larger than {limit // (1024 * 1024)} MB",
            {"limit_bytes": limit, "size_bytes": size},
        )


def decode(data: bytes, max_seconds: float, rate: int = WHISPER_RATE) -> Clip:
    """The file's first audio stream as mono samples at `rate`. A container that declares a
    duration over the limit is refused before anything is decoded; one that does not declare it
    is refused as soon as the decoded audio passes the limit."""
    if not data:
        raise BadAudio("the file is empty")
    _check_riff(data)
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError):
        raise NotAudio(f"the file is not audio that alma can read ({READABLE})") from None
    with container:
        if not container.streams.audio:
            raise NotAudio(f"the file holds no audio stream ({READABLE} are read)")
        declared = container.duration / av.time_base if container.duration else None
        if declared is not None and declared > max_seconds:
            raise _too_long(max_seconds, declared)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks: list[npt.NDArray[np.float32]] = []
        count = 0
        try:
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    chunks.append(_samples(out))
                    count += len(chunks[-1])
                if count > max_seconds * rate:
                    raise _too_long(max_seconds, None)
            chunks += [_samples(out) for out in resampler.resample(None)]
        except av.error.FFmpegError:
            raise BadAudio("the audio is corrupt and cannot be decoded") from None
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise BadAudio("the file holds no audio samples: it is truncated or corrupt")
    clip = Clip(np.concatenate(chunks).astype(np.float32), rate)
    if declared is not None and clip.seconds < 0.9 * declared - 0.5:
        raise BadAudio(
            f"the audio is truncated: it declares {declared:.1f} s and holds {clip.seconds:.1f} s",
            {"declared_seconds": round(declared, 3), "decoded_seconds": round(clip.seconds, 3)},
        )
    return clip


def _samples(frame: av.AudioFrame) -> npt.NDArray[np.float32]:
    return np.asarray(frame.to_ndarray(), dtype=np.float32).reshape(-1)


def _check_riff(data: bytes) -> None:
    """A WAV file states its size; PyAV would quietly decode what is left of a cut one."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    stated = int.from_bytes(data[4:8], "little") + 8
    if stated != 0xFFFFFFFF + 8 and stated > len(data):
        raise BadAudio(
            f"the WAV file is truncated: it states {stated} bytes and holds {len(data)}",
            {"stated_bytes": stated, "size_bytes": len(data)},
        )


def _too_long(limit: float, seconds: float | None) -> AudioTooLong:
    details: dict[str, object] = {"limit_seconds": limit}
    if seconds is not None:
        details["seconds"] = round(seconds, 3)
    return AudioTooLong(f"the audio is longer than {limit:g} seconds", details)


def encode(clip: Clip, response_format: str) -> bytes:
    """`clip` as a complete file of `response_format` (see FORMATS)."""
    container_format, codec, codec_rate, _ = FORMATS[response_format]
    rate = codec_rate or clip.rate
    pcm = np.clip(clip.samples * 32767, -32768, 32767).astype(np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.rate = clip.rate
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def media_type(response_format: str) -> str:
    return FORMATS[response_format][3]
