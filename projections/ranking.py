"""Hybrid ranking: dense similarity, BM25 over words, recency and importance, fused into one
score between 0 and 1."""

from __future__ import annotations

import math
import operator
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain
from typing import Literal, NamedTuple

from alma.embeddings import LARGE_MODEL, MULTILINGUAL_MODEL

# Words that carry no memory on their own, in the two languages alma speaks first.
STOPWORDS = frozenset(
    [
        "a",
        "al",
        "algo",
        "algun",
        "alguna",
        "algunas",
        "alguno",
        "algunos",
        "ante",
        "antes",
        "asi",
        "aun",
        "aunque",
        "cada",
        "como",
        "con",
        "contra",
        "cual",
        "cuales",
        "cuando",
        "de",
        "del",
        "desde",
        "donde",
        "dos",
        "el",
        "ella",
        "ellas",
        "ello",
        "ellos",
        "en",
        "entre",
        "era",
        "eran",
        "eres",
        "es",
        "esa",
        "esas",
        "ese",
        "eso",
        "esos",
        "esta",
        "estaba",
        "estado",
        "estan",
        "estar",
        "estas",
        "este",
        "esto",
        "estos",
        "estoy",
        "fue",
        "fueron",
        "ha",
        "habia",
        "han",
        "has",
        "hasta",
        "hay",
        "he",
        "la",
        "las",
        "le",
        "les",
        "lo",
        "los",
        "mas",
        "me",
        "mi",
        "mis",
        "mucho",
        "muy",
        "nada",
        "ni",
        "no",
        "nos",
        "nosotros",
        "o",
        "os",
        "otra",
        "otro",
        "para",
        "pero",
        "poco",
        "por",
        "porque",
        "que",
        "quien",
        "se",
        "sea",
        "ser",
        "si",
        "sin",
        "sobre",
        "son",
        "soy",
        "su",
        "sus",
        "tambien",
        "te",
        "tengo",
        "ti",
        "tiene",
        "tienen",
        "todo",
        "todos",
        "tu",
        "tus",
        "un",
        "una",
        "uno",
        "unos",
        "usted",
        "ya",
        "yo",
        "about",
        "after",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "he",
        "her",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "just",
        "me",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "out",
        "she",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "they",
        "this",
        "to",
        "too",
        "up",
        "us",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
    ]
)


def fold(text: str) -> str:
    """Case and accents ignored, so 'jose' matches 'José'."""
    folded = text.replace("\x00", "").casefold()
    if folded.isascii():  # nothing to decompose: most English text, read at every search
        return folded
    decomposed = unicodedata.normalize("NFKD", folded)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def terms(text: str) -> list[str]:
    """The words BM25 counts: folded, at least two characters, stopwords left out."""
    return [w for w in re.findall(r"\w+", fold(text)) if len(w) > 1 and w not in STOPWORDS]


def term_counts(text: str) -> Counter[str]:
    return Counter(terms(text))


def bm25_idf(documents: int, frequency: int) -> float:
    return math.log(1 + (documents - frequency + 0.5) / (frequency + 0.5))


@dataclass(frozen=True)
class Weights:
    """Measured on tests/data/recall and LoCoMo's dev split (bench/recall.py, bench/fusion.py):
    mostly dense with some BM25, scaled by the query's best, is best; any weight on recency cost
    recall there, since questions ask about old facts as often as new ones, so it is off by
    default and kept for deployments whose users ask "lately"."""

    dense: float = 0.72
    lexical: float = 0.25
    recency: float = 0.0
    importance: float = 0.03
    # What a source says (`content`): its words, each weighted by how rare it is among the
    # search's candidates. A short reaction ("Wow, that's great!") matches many questions in
    # meaning and answers none; the turn that holds a fact names things. Measured on LoCoMo's
    # dev split and tests/data/recall (bench/fusion.py, README).
    content: float = 0.15
    half_life_days: float = 30.0
    # BM25 divided by the query's best BM25 ("best"), or by what the query's words weigh in all
    # (their IDFs, words never said included: "query"), which keeps a match's share of the
    # query absolute. bench/fusion.py measured both: "best" ranks better (README).
    lexical_scale: Literal["best", "query"] = "best"
    # A second hop: BM25 over the rare words of the first hits (names, places, things), the
    # query's own left out. bench/fusion.py measured it: LoCoMo gains, our own set loses, so
    # it is off by default (README).
    expansion: float = 0.0
    # A turn's score (a message, or a snippet with a speaker) is blended with the best of its
    # neighbours among the candidates: the turns next to it in time (`neighbours_each_side`)
    # within its episode (turns that happened within `episode_gap_minutes` of each other: one
    # conversation session). The answer to a question often lies beside the turn that matches
    # it best ("Yes! It was amazing."). Measured on LoCoMo (bench/locomo.py) and
    # tests/data/recall.
    neighbours: float = 0.7
    neighbours_each_side: int = 2
    episode_gap_minutes: float = 60.0
    # The turns beside the first `neighbour_candidates` hits (`neighbours_each_side` each side,
    # within the episode) become candidates even when neither signal found them, so a reply
    # beside the turn that matches can rise with it.
    neighbour_candidates: int = 20
    # Past the first `named_after` hits, the turns of a speaker the question names ("What
    # activities does Melanie partake in?") rise by `named_speaker`: a question about one
    # person's life has evidence spread over many of their turns, and the rest of a long hit list
    # is where it lies. The first hits are left as ranked, as a question may name the wrong
    # person (LoCoMo's adversarial ones do). Measured on LoCoMo's dev split (bench/fusion.py).
    named_speaker: float = 0.05
    named_after: int = 10


# Weights measured best for another embedding model than the default (bench/fusion.py --model,
# LoCoMo's dev split and tests/data/recall; README): all-mpnet-base-v2 adds a second hop;
# multilingual-e5-small, whose similarities crowd together, keeps the ranking it was measured
# with (what a source says, and more neighbours, cost it Spanish questions of our set).
_MODEL_WEIGHTS = {
    LARGE_MODEL: Weights(expansion=0.1),
    MULTILINGUAL_MODEL: Weights(
        content=0.0,
        neighbours=0.5,
        neighbours_each_side=1,
        neighbour_candidates=0,
        named_speaker=0.0,
    ),
}


def weights_for(model: str) -> Weights:
    """The ranking's weights for an embedding model: those measured best for it, else the
    default's (measured on the packaged MiniLM)."""
    return _MODEL_WEIGHTS.get(model, Weights())


class Candidate(NamedTuple):
    """A tuple, not a dataclass: a search builds one per source twice, and a frozen dataclass
    costs several times as much to build."""

    doc_id: str
    dense: float
    lexical: float
    occurred_at: datetime  # when the source happened
    importance: float
    speaker: str | None  # who said it, when known
    expanded: float = 0.0  # BM25 of the second hop's words, scaled by their best
    content: float = 0.0  # what it says (`contents`), 0 to 1
    turn: bool = False  # a turn of a conversation: a message, or a snippet with a speaker


@dataclass(frozen=True)
class Boost:
    """What a query's hints (`query_hints`) add: `weight` of the score is theirs, and each
    candidate has of it its fit (by doc id, 0 to 1; absent: 0)."""

    weight: float
    fits: Mapping[str, float]


def fuse(
    candidates: list[Candidate],
    now: datetime,
    weights: Weights,
    information: float = 0.0,
    boost: Boost | None = None,
) -> list[tuple[Candidate, float]]:
    """Best first. BM25 is scaled so both signals run from 0 to 1: by the query's best BM25,
    or by `information` (the sum of the query's word IDFs) under `lexical_scale="query"`;
    recency halves every `half_life_days`. With a `boost`, the fused score is mixed with each
    candidate's fit to the query's hints, so scores stay within 0 and 1."""
    if weights.lexical_scale == "query":
        scale = information or 1.0
    else:
        scale = max((c.lexical for c in candidates), default=0.0) or 1.0
    # The signals' weights may add up to more than 1: the score is scaled back within 1.
    total = max(
        1.0,
        weights.dense
        + weights.lexical
        + weights.recency
        + weights.importance
        + weights.expansion
        + weights.content,
    )
    scored: list[tuple[Candidate, float]] = []
    for candidate in candidates:
        recency = 0.0  # its weight is 0 by default: the age is read only when it counts
        if weights.recency:
            age_days = max(0.0, (now - candidate.occurred_at).total_seconds() / 86400)
            recency = 0.5 ** (age_days / weights.half_life_days)
        score = (
            weights.dense * max(0.0, candidate.dense)
            + weights.lexical * min(1.0, candidate.lexical / scale)
            + weights.recency * recency
            + weights.importance * candidate.importance
            + weights.expansion * candidate.expanded
            + weights.content * candidate.content
        ) / total
        if boost is not None:
            score = (1 - boost.weight) * score + boost.weight * boost.fits.get(candidate.doc_id, 0)
        scored.append((candidate, score))
    if weights.neighbours:
        scored = _with_neighbours(scored, weights)
    scored.sort(key=lambda pair: pair[1], reverse=True)
    return scored


def named_speaker_later(
    ranked: list[tuple[Candidate, float]], query: str, weights: Weights
) -> list[tuple[Candidate, float]]:
    """`ranked` (best first) with the turns of a speaker `query` names (one of the speaker's
    words among the query's) raised by `weights.named_speaker` past the first
    `weights.named_after`. A raised score is held at the last first hit's, so the list stays in
    the order of its scores."""
    after = weights.named_after
    asked = set(terms(query))
    if not weights.named_speaker or len(ranked) <= after or not asked:
        return ranked
    head, tail = ranked[:after], ranked[after:]
    ceiling = head[-1][1]
    speakers = {c.speaker for c, _ in tail if c.speaker}
    named = {speaker for speaker in speakers if asked.intersection(terms(speaker))}
    rise = weights.named_speaker
    raised = [(c, min(ceiling, score + rise) if c.speaker in named else score) for c, score in tail]
    raised.sort(key=lambda pair: pair[1], reverse=True)
    return head + raised


# A source counts full `content` when its words weigh as much as this many of the rarest
# among the candidates (a word only it holds): a turn that names a few things.
FULL_CONTENT = 12


def contents(words: list[Counter[str]]) -> list[float]:
    """What each of a search's candidates says, from 0 to 1: its words (`term_counts`), each
    weighted by its IDF among the candidates, over `FULL_CONTENT` of the highest IDF. Read from
    the candidates alone, it needs no statistics of the instance, and it is the same whatever
    the instance's size: a word common among the sources a query found says little there."""
    held = Counter(chain.from_iterable(words))  # each word once per source
    total = len(words)
    # A word's weight depends only on how many sources hold it: a few values for many words.
    idf = {n: bm25_idf(total, n) for n in set(held.values())}
    weight = {word: idf[n] for word, n in held.items()}
    full = FULL_CONTENT * bm25_idf(total, 1)
    return [
        min(1.0, sum(map(operator.mul, counts.values(), map(weight.__getitem__, counts))) / full)
        for counts in words
    ]


def _with_neighbours(
    scored: list[tuple[Candidate, float]], weights: Weights
) -> list[tuple[Candidate, float]]:
    """Each turn's score blended with the best score near it in time, still between 0 and 1.
    A fact written down (a snippet with no speaker, the memory text) has no neighbours."""
    gap = timedelta(minutes=weights.episode_gap_minutes)
    side = weights.neighbours_each_side
    turns = [pair for pair in scored if pair[0].turn]
    in_time = sorted(turns, key=lambda pair: pair[0].occurred_at)
    episodes: list[list[tuple[Candidate, float]]] = []
    for pair in in_time:
        if episodes and pair[0].occurred_at - episodes[-1][-1][0].occurred_at <= gap:
            episodes[-1].append(pair)
        else:
            episodes.append([pair])
    blended = [pair for pair in scored if not pair[0].turn]
    for episode in episodes:
        scores = [score for _, score in episode]
        for n, (candidate, score) in enumerate(episode):
            near = max(scores[max(0, n - side) : n + side + 1])
            blended.append(
                (candidate, (score + weights.neighbours * near) / (1 + weights.neighbours))
            )
    return blended
