"""Whether a formed memory says nothing that one the instance already has does not.

The local model is not shown the instance's memories, so a fact told twice came back twice. A
new memory repeats an existing one when every word it means something by is in the existing one
(case and accents aside; a word also matches a longer form of itself, "llama" and "llamado";
a number counts as often as it is written, so "11-11" is not "11-110"),
both deny the same things ("no", "never" on both sides or on neither), and what the existing one
says beyond it makes it no one else's: no relative ("La hermana del usuario es profesora" is not
"El usuario es profesor"), and no name unless the new one names whom it is about ("The user is
a nurse" is not "The user knows Sam, who is a nurse"). So it errs on keeping both: "El usuario
es profesor" after "El usuario es profesor en Cádiz" is kept (Cádiz could be a person), and so
is "Lucía es enfermera" after "Mi hermana, Lucía, es enfermera" (or her friend). Meaning alone
cannot tell: the embedding model finds "birthday on 14 March" and "birthday on 14 May" closer
(0.95) than two wordings of one fact ("has a greyhound called Trueno", "adopted a greyhound that
is called Trueno", 0.86), and "El usuario vive en Sevilla" as close to "La hermana del usuario
vive en Sevilla" (0.91). Spanish and English words, as the stopwords of the index.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from alma.projections.ranking import STOPWORDS, fold

# Words that turn a statement around: kept, and matched both ways. "dos" (two) is a number.
_NEGATIONS = frozenset({"no", "not", "ni", "nor", "sin", "without", "nunca", "never", "jamas"})
_IGNORED = STOPWORDS - _NEGATIONS - {"dos"}
# Whose fact it is: beyond the new memory's words, one of these makes the existing one another
# person's. Written as text: as a list literal it would take a line a word.
_RELATIVES = frozenset(
    """
    hermana hermano hermanos hija hijo hijos madre padre padres mama papa abuela abuelo abuelos
    nieta nieto tia tio prima primo sobrina sobrino novia novio esposa esposo mujer marido pareja
    amiga amigo amigos vecina vecino vecinos jefa jefe companera companero suegra suegro cunada
    cunado bebe
    sister brother siblings daughter son children child kids baby mother father parents mum mom
    dad grandmother grandfather grandma grandpa granddaughter grandson aunt uncle cousin niece
    nephew wife husband partner girlfriend boyfriend fiance fiancee friend friends neighbour
    neighbor boss colleague
    """.split()  # noqa: SIM905
)
_WORD = re.compile(r"\w+")
_SHORTEST_STEM = 4  # a word matches a longer one it begins only from this length


def repeats(text: str, speaker: str | None, existing: Iterable[tuple[str, str | None]]) -> bool:
    """Whether one of the `existing` memories (text, speaker) says what `text` says, of the same
    speaker when both name one."""
    return any(
        (speaker is None or other is None or fold(speaker) == fold(other))
        and says_the_same(text, said)
        for said, other in existing
    )


def says_the_same(text: str, existing: str) -> bool:
    """Whether `text` states nothing that `existing` does not (see the module's doc)."""
    new, old = _words(text), _words(existing)
    if not new or (new & _NEGATIONS) != (old & _NEGATIONS):
        return False
    if not _numbers(text) <= _numbers(existing):  # "11-11" says 11 twice; "11-110" once
        return False
    if not all(any(_same_word(word, other) for other in old) for word in new):
        return False
    beyond = {other for other in old if not any(_same_word(word, other) for word in new)}
    # A name beyond it makes the existing memory someone else's only when the new one names no
    # one: "Priya es panadera" is about the Priya of "Priya es panadera en St Ives".
    others = _RELATIVES if _names(text) else _RELATIVES | _names(existing)
    return not beyond & others


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(fold(text)) if w not in _IGNORED}


def _numbers(text: str) -> Counter[str]:
    return Counter(w for w in _WORD.findall(text) if w.isdigit())


def _names(text: str) -> set[str]:
    """The words written with a capital that are not stopwords ("Lucía", not "La")."""
    return {fold(w) for w in _WORD.findall(text) if w[0].isupper() and fold(w) not in STOPWORDS}


def _same_word(a: str, b: str) -> bool:
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    return len(short) >= _SHORTEST_STEM and long.startswith(short) and not short.isdigit()
