"""Activation by meaning: a lorebook entry marked `vectorized` (SillyTavern's name) is also called
up when the new message is about it, for worlds whose keywords users do not type exactly.

The message and the entries' content are embedded with the memory index's model. Raw cosines of
small sentence models say more about a text's language and length than about its topic (with
multilingual-e5-small every pair scores 0.7-0.86, "Hola, ¿cómo estás?" 0.81 against a Spanish
entry), so both sides are first centred on the mean of a fixed set of everyday chat lines, the
background against which a message's topic stands out; then the entry closest to the message is
called up when it scores at least the book's `min_score`, or the model's own (`MIN_SCORE`,
measured by `bench/lore.py` on tests/data/lore_meaning.json). One entry per book and turn: the
one the message is most about; the others its keys call up as ever.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from alma.embeddings import MULTILINGUAL_MODEL, PACKAGED_MODEL, Embedder

# Everyday lines of a chat, in both first-class languages: what a message about nothing in
# particular looks like to the model.
BACKGROUND = (
    "Good morning.",
    "Buenos días.",
    "How was your day?",
    "¿Qué tal tu día?",
    "I don't know what to say.",
    "No sé qué decir.",
    "Let's talk later.",
    "Hablamos luego.",
    "That sounds great!",
    "¡Qué bien suena eso!",
    "Could you repeat that?",
    "¿Puedes repetirlo?",
    "I had lunch with a friend.",
    "Comí con un amigo.",
    "See you tomorrow.",
    "Nos vemos mañana.",
)
# The centred cosine from which an entry is called up, by embedding model, chosen on
# bench/lore.py's sweep: multilingual-e5-small calls up 9 of 10 entries in each language, and
# 2 of 15 messages a wrong one; all-MiniLM-L6-v2, an English model, 5 of 10 in English (1 of 15
# wrong), 2 of 10 in Spanish (3 of 15 wrong). A model not measured takes MiniLM's.
MIN_SCORE = {PACKAGED_MODEL: 0.45, MULTILINGUAL_MODEL: 0.35}
_KEPT = 20_000  # entry vectors kept, by text
_MATRICES_KEPT = 64  # the stacked vectors of recent sets of entries (a book's, as it is now)


class Meaning:
    """The embedded, centred vectors of entries' content, kept by text across turns (an entry
    is embedded once, again only when its content changes) and stacked by set of texts (a turn
    takes one product with a book's matrix), and the background they are centred on.
    Thread-safe."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.min_score = MIN_SCORE.get(embedder.model_name, MIN_SCORE[PACKAGED_MODEL])
        self._lock = threading.Lock()
        self._background: np.ndarray | None = None
        self._vectors: dict[str, np.ndarray] = {}
        self._matrices: dict[tuple[str, ...], np.ndarray] = {}

    def scores(self, query: Sequence[float], texts: Sequence[str]) -> list[float]:
        """How close in meaning each text is to the query (its vector, embedded as a query)."""
        key = tuple(texts)
        matrix = self._matrices.get(key)
        if matrix is None:
            matrix = self._stacked(texts)
            with self._lock:
                if len(self._matrices) >= _MATRICES_KEPT:
                    self._matrices.clear()
                self._matrices[key] = matrix
        scores: list[float] = (matrix @ self._centred(query)).tolist()
        return scores

    def _stacked(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            found = {t: self._vectors[t] for t in texts if t in self._vectors}
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            vectors = map(self._centred, self.embedder.encode(missing))
            fresh = dict(zip(missing, vectors, strict=True))
            found.update(fresh)
            with self._lock:
                if len(self._vectors) + len(fresh) > _KEPT:
                    self._vectors.clear()
                self._vectors.update(fresh)
        return np.stack([found[t] for t in texts])

    def _centred(self, vector: Sequence[float]) -> np.ndarray:
        if self._background is None:
            self._background = np.asarray(self.embedder.encode(list(BACKGROUND))).mean(axis=0)
        centred: np.ndarray = np.asarray(vector) - self._background
        norm = float(np.linalg.norm(centred))
        return centred / norm if norm else centred
