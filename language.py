"""Spanish or English, told from a text's commonest words and marks: what speech speaks a reply
in when nothing else says, and what the local model writes a conversation's memories in."""

from __future__ import annotations

import re

_COMMON_SPANISH = (
    "el la los las de del que y en un una es por con para no se su al lo como más pero sus "
    "le ya o este sí porque esta entre cuando muy sin sobre también me hasta hay donde "
    "quien desde nos durante todos uno les ni contra otros ese eso ante ellos e esto mí "
    "antes algunos qué estoy estás está mi tu te ti yo usted hola gracias"
)
_COMMON_ENGLISH = (
    "the of and to in is you that it he was for on are as with his they i at be this have "
    "from or one had by but not what all were we when your can said there use an each "
    "which she do how their if will up about out many then them these so some her would "
    "my me hello thanks"
)
_SPANISH = frozenset(_COMMON_SPANISH.split())
_ENGLISH = frozenset(_COMMON_ENGLISH.split())


def guess_language(text: str, default: str) -> str:
    """Spanish or English by their commonest words and marks; `default` when neither shows."""
    words = re.findall(r"\w+", text.casefold())
    spanish = sum(w in _SPANISH for w in words) + 2 * len(re.findall(r"[ñ¿¡áéíóú]", text.lower()))
    english = sum(w in _ENGLISH for w in words)
    if spanish == english:
        return default
    return "es" if spanish > english else "en"
