"""The dense half of the memory index: one Chroma collection per instance and index generation,
so a search never filters by metadata (Chroma filters by scanning)."""

from __future__ import annotations

import contextlib
from typing import Any
from uuid import UUID

import chromadb
from chromadb.api import ClientAPI
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import NotFoundError

from settings import Settings

PREFIX = "alma-g"


def open_chroma(settings: Settings) -> ClientAPI:
    """Embedded under ALMA_DATA_DIR by default; a Chroma server when ALMA_CHROMA_URL is set.
    Telemetry off; no embedding function is ever used (we pass our own vectors)."""
    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    if settings.chroma_url:
        from urllib.parse import urlparse

        url = urlparse(settings.chroma_url)
        return chromadb.HttpClient(
            host=url.hostname or "127.0.0.1",
            port=url.port or 8000,
            ssl=url.scheme == "https",
            settings=chroma_settings,
        )
    path = settings.data_dir / "chroma"
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=chroma_settings)


class VectorIndex:
    def __init__(self, client: ClientAPI) -> None:
        self.client = client

    @staticmethod
    def name(generation: int, instance_id: UUID) -> str:
        return f"{PREFIX}{generation}-{instance_id.hex}"

    def _collection(self, generation: int, instance_id: UUID, create: bool) -> Any:
        name = self.name(generation, instance_id)
        if create:
            return self.client.get_or_create_collection(
                name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
            )
        try:
            return self.client.get_collection(name, embedding_function=None)
        except (NotFoundError, ValueError):
            return None

    def upsert(
        self,
        generation: int,
        instance_id: UUID,
        ids: list[str],
        vectors: list[list[float]],
        metadatas: list[dict[str, Any]],
    ) -> None:
        collection = self._collection(generation, instance_id, create=True)
        collection.upsert(ids=ids, embeddings=vectors, metadatas=metadatas)

    def delete(self, generation: int, instance_id: UUID, ids: list[str]) -> None:
        collection = self._collection(generation, instance_id, create=False)
        if collection is not None and ids:
            collection.delete(ids=ids)

    def drop_instance(self, generation: int, instance_id: UUID) -> None:
        with contextlib.suppress(NotFoundError, ValueError):
            self.client.delete_collection(self.name(generation, instance_id))

    def drop_generation(self, generation: int) -> None:
        prefix = f"{PREFIX}{generation}-"
        for collection in self.client.list_collections():
            if collection.name.startswith(prefix):
                self.client.delete_collection(collection.name)

    def nearest(
        self, generation: int, instance_id: UUID, vector: list[float], n: int
    ) -> list[tuple[str, float]]:
        """(id, cosine similarity), most similar first."""
        collection = self._collection(generation, instance_id, create=False)
        if collection is None:
            return []
        count = collection.count()
        if count == 0:
            return []
        result = collection.query(
            query_embeddings=[vector], n_results=min(n, count), include=["distances"]
        )
        return [
            (doc_id, 1.0 - distance)
            for doc_id, distance in zip(result["ids"][0], result["distances"][0], strict=True)
        ]

    def vectors(self, generation: int, instance_id: UUID, ids: list[str]) -> dict[str, Any]:
        collection = self._collection(generation, instance_id, create=False)
        if collection is None or not ids:
            return {}
        found = collection.get(ids=ids, include=["embeddings"])
        return dict(zip(found["ids"], found["embeddings"], strict=True))

    def ids(self, generation: int, instance_id: UUID) -> set[str]:
        collection = self._collection(generation, instance_id, create=False)
        return set() if collection is None else set(collection.get(include=[])["ids"])
