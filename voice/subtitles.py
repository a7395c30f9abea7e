"""A transcript's segments as subtitles: SubRip (`srt`) and WebVTT (`vtt`), as OpenAI's
transcriptions and translations give them."""

from __future__ import annotations

from collections.abc import Sequence

from alma.voice.stt import Segment


def srt(segments: Sequence[Segment]) -> str:
    """`1\\n00:00:00,000 --> 00:00:02,500\\ntext\\n`, numbered from 1, a blank line between."""
    cues = [
        f"{n}\n{_time(s.start, ',')} --> {_time(s.end, ',')}\n{s.text}\n"
        for n, s in enumerate(_spoken(segments), 1)
    ]
    return "\n".join(cues)


def vtt(segments: Sequence[Segment]) -> str:
    """`WEBVTT`, then `00:00:00.000 --> 00:00:02.500\\ntext` cues, a blank line before each."""
    cues = [f"{_time(s.start, '.')} --> {_time(s.end, '.')}\n{s.text}\n" for s in _spoken(segments)]
    return "\n".join(["WEBVTT\n", *cues])


def _spoken(segments: Sequence[Segment]) -> list[Segment]:
    return [s for s in segments if s.text]


def _time(seconds: float, decimal: str) -> str:
    """`HH:MM:SS` and milliseconds after `decimal` (`,` in SubRip, `.` in WebVTT)."""
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    whole, millis = divmod(millis, 1000)
    return f"{hours:02}:{minutes:02}:{whole:02}{decimal}{millis:03}"
