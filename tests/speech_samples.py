"""Speech to test with: sentences spoken by the offline engine, and the word error rate."""

from __future__ import annotations

import re

from alma.voice import Speaker, VoiceSettings

ENGLISH = [
    "My sister works as a nurse at the hospital in town.",
    "We are going to have dinner at a small restaurant tomorrow.",
    "The train leaves the station late in the evening.",
    "It is very hot today and the sky is clear.",
    "The old captain sailed to Lisbon in the summer.",
]
SPANISH = [
    "La casa de mi abuela tiene un jardín con muchas flores.",
    "Mañana vamos a comer en un restaurante del centro.",
    "Mi hermana trabaja como enfermera en el hospital.",
    "Hoy hace mucho calor y el cielo está despejado.",
    "El tren sale de la estación por la noche.",
]

_offline = Speaker(preferred="espeak")


def say(text: str, language: str, response_format: str = "wav") -> bytes:
    """`text` spoken by espeak-ng, as a file of `response_format`."""
    return _offline.speak(text, VoiceSettings(language=language), response_format).audio


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance (substitutions, insertions, deletions) over reference words."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, expected in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, heard in enumerate(hyp, 1):
            cost = diagonal + (expected != heard)
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, cost)
    return row[len(hyp)] / max(1, len(ref))
