"""Vectors without the model, for a bulk of memories: an `alma` command run with the embedder's
batch encoding replaced by a pool of the real model's vectors.

    python bench/stand_in.py POOL.npz worker
    python bench/stand_in.py POOL.npz projections rebuild memory-index

Everything else is alma's own (`alma.api.cli.main` with the arguments after the pool): the
followers, the memory index's plans, its Chroma and SQL writes. Only `Embedder.encode` (what
indexing calls; a search's query goes through `encode_query`, left as it is) answers from the
pool: the real model's vectors of a few thousand texts of bench/memory.py's generator, `pool`
below. A text gets the vector of a pool text made from the same template (found by the words
the template writes itself), picked by a hash of the text, so a query about pets meets the
pet memories' vectors near it as it would with the model, at no embedding cost. The model is
still loaded on the first batch, so the process holds it in memory as a real worker does.
"""

from __future__ import annotations

import random
import re
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench")]

from alma.api import cli  # noqa: E402
from alma.embeddings import Embedder, Interrupted, Stopping  # noqa: E402
from bench.memory import MEMORY_TEMPLATES, SPEAKERS, fill  # noqa: E402

PER_TEMPLATE = 160  # pool texts of each template: 4,000 in all


def _pattern(template: str) -> re.Pattern[str]:
    literal = [re.escape(part) for part in re.split(r"\{\w+\}", template)]
    return re.compile(".+?".join(literal))


PATTERNS = [_pattern(template) for template in MEMORY_TEMPLATES]


def template_of(text: str) -> int:
    """The template `text` was made from, or -1."""
    for n, pattern in enumerate(PATTERNS):
        if pattern.search(text):
            return n
    return -1


def pool(embedder: Embedder, seed: int = 17) -> tuple[np.ndarray, np.ndarray]:
    """The model's vectors of `PER_TEMPLATE` texts of each template, as indexed (after a
    speaker's name), and each one's template."""
    rng = random.Random(seed)
    texts, templates = [], []
    for n, template in enumerate(MEMORY_TEMPLATES):
        for k in range(PER_TEMPLATE):
            texts.append(f"{SPEAKERS[k % 2]}: {fill(template, rng)}")
            templates.append(n)
    vectors = np.asarray(embedder.encode(texts), dtype=np.float32)
    return vectors, np.asarray(templates, dtype=np.int32)


class PooledVectors:
    def __init__(self, vectors: np.ndarray, templates: np.ndarray) -> None:
        self.vectors = vectors
        self.rows = {int(t): np.flatnonzero(templates == t) for t in np.unique(templates)}
        self.everyone = np.arange(len(vectors))

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        chosen = []
        for text in texts:
            rows = self.rows.get(template_of(text), self.everyone)
            chosen.append(rows[zlib.crc32(text.encode()) % len(rows)])
        vectors: list[list[float]] = self.vectors[chosen].tolist()
        return vectors


def install(path: Path) -> None:
    """Makes every Embedder of this process answer batches from the pool at `path`."""
    with np.load(path) as stored:
        pooled = PooledVectors(stored["vectors"], stored["templates"])

    def encode(
        self: Embedder, texts: Sequence[str], stopping: Stopping | None = None
    ) -> list[list[float]]:
        self.load(batch=True)  # held in memory, as by a worker that embeds
        if stopping is not None and stopping():
            raise Interrupted("the encoding was left between two batches")
        return pooled.encode(texts)

    setattr(Embedder, "encode", encode)  # noqa: B010


def main(argv: list[str]) -> Any:
    install(Path(argv[0]))
    return cli.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
