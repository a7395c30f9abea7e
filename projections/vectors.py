"""The dense half of the memory index: one Chroma collection per instance and index generation,
so a search never filters by instance (Chroma filters by scanning); only a search within a
period filters, by when each source happened."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import chromadb
from chromadb.api import ClientAPI
from chromadb.api.collection_configuration import CreateCollectionConfiguration
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import NotFoundError

from alma.projections.memory_docs import Period
from alma.settings import Settings

PREFIX = "alma-g"
# When a source happened, in a vector's metadata: microseconds since 1970 (an integer, which
# Chroma compares exactly).
OCCURRED = "occurred_at_us"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Chroma keeps every write in a log it reads from each collection's last persisted point, and
# purges only what every collection has persisted; by default a collection persists each 1,000
# vectors, which one instance's collection may take months to reach. Measured with 100
# collections: by default writes slowed as the log grew and queries were several times slower
# than when persisting every 10 vectors, which keeps both fast.
COLLECTION: CreateCollectionConfiguration = {
    "hnsw": {"space": "cosine", "sync_threshold": 10, "batch_size": 10}
}
T = TypeVar("T")


def described(kind: str, position: int, occurred_at: datetime) -> dict[str, Any]:
    """A vector's metadata: its source's kind, position and when it happened."""
    return {"kind": kind, "position": position, OCCURRED: _microseconds(occurred_at)}


def _microseconds(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _within(period: Period) -> dict[str, Any]:
    """Chroma's filter for the sources that happened within `period`."""
    bounds: list[dict[str, Any]] = []
    if period.since is not None:
        bounds.append({OCCURRED: {"$gte": _microseconds(period.since)}})
    if period.until is not None:
        bounds.append({OCCURRED: {"$lte": _microseconds(period.until)}})
    return {"$and": bounds} if len(bounds) > 1 else bounds[0]


def _holds(period: Period, occurred_us: int) -> bool:
    """Whether a vector whose source happened at `occurred_us` (its metadata) is within."""
    return period.holds(_EPOCH + timedelta(microseconds=occurred_us))


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
        # Collection handles by name: looking one up is a round trip (a request to a server).
        self._handles: dict[str, Any] = {}

    @staticmethod
    def name(generation: int, instance_id: UUID) -> str:
        return f"{PREFIX}{generation}-{instance_id.hex}"

    def _collection(self, name: str, create: bool) -> Any:
        if name in self._handles:
            return self._handles[name]
        if create:
            collection = self.client.get_or_create_collection(
                name, embedding_function=None, configuration=COLLECTION
            )
        else:
            try:
                collection = self.client.get_collection(name, embedding_function=None)
            except (NotFoundError, ValueError):
                return None
        self._handles[name] = collection
        return collection

    def _with(
        self, generation: int, instance_id: UUID, create: bool, use: Callable[[Any], T], empty: T
    ) -> T:
        """`use(collection)`, or `empty` when there is none. A handle whose collection another
        process dropped is looked up again, once."""
        name = self.name(generation, instance_id)
        for attempt in (1, 2):
            collection = self._collection(name, create)
            if collection is None:
                return empty
            try:
                return use(collection)
            except NotFoundError:
                self._handles.pop(name, None)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def upsert(
        self,
        generation: int,
        instance_id: UUID,
        ids: list[str],
        vectors: list[list[float]],
        metadatas: list[dict[str, Any]],
    ) -> None:
        self._with(
            generation,
            instance_id,
            True,
            lambda c: c.upsert(ids=ids, embeddings=vectors, metadatas=metadatas),
            None,
        )

    def describe(
        self,
        generation: int,
        instance_id: UUID,
        ids: list[str],
        metadatas: list[dict[str, Any]],
    ) -> None:
        """Writes these keys into the metadata of vectors already stored; the vectors stay."""

        def update(collection: Any) -> None:
            size = self.client.get_max_batch_size()
            for start in range(0, len(ids), size):
                part = slice(start, start + size)
                collection.update(ids=ids[part], metadatas=metadatas[part])

        self._with(generation, instance_id, False, update, None)

    def delete(self, generation: int, instance_id: UUID, ids: list[str]) -> None:
        if ids:
            self._with(generation, instance_id, False, lambda c: c.delete(ids=ids), None)

    def drop_instance(self, generation: int, instance_id: UUID) -> None:
        name = self.name(generation, instance_id)
        self._handles.pop(name, None)
        with contextlib.suppress(NotFoundError, ValueError):
            self.client.delete_collection(name)

    def drop_generation(self, generation: int) -> None:
        prefix = f"{PREFIX}{generation}-"
        self._handles = {n: c for n, c in self._handles.items() if not n.startswith(prefix)}
        for collection in self.client.list_collections():
            if collection.name.startswith(prefix):
                self.client.delete_collection(collection.name)

    def nearest(
        self,
        generation: int,
        instance_id: UUID,
        vector: list[float],
        n: int,
        period: Period | None = None,
        enough: int = 1,
    ) -> list[tuple[str, float]]:
        """(id, cosine similarity), most similar first; with a `period`, of the sources that
        happened within it. Those among the `n` nearest of all are exactly the nearest within
        it, so they are asked for first; only when fewer than `enough` are within it (and the
        collection holds more), Chroma filters, which costs a scan of the collection's metadata
        (README, memory index)."""

        def similar(found: Any) -> list[tuple[str, float]]:
            pairs = zip(found["ids"][0], found["distances"][0], strict=True)
            return [(doc_id, 1.0 - distance) for doc_id, distance in pairs]

        def query(collection: Any) -> list[tuple[str, float]]:
            # Asking for more than the collection holds returns what it holds. Metadata is read
            # only for a period: reading it costs more than the query itself.
            if period is None:
                return similar(
                    collection.query(query_embeddings=[vector], n_results=n, include=["distances"])
                )
            found = collection.query(
                query_embeddings=[vector], n_results=n, include=["distances", "metadatas"]
            )
            times = [m.get(OCCURRED) for m in found["metadatas"][0]]
            within = [
                pair
                for pair, when in zip(similar(found), times, strict=True)
                if when is not None and _holds(period, when)
            ]
            if len(within) >= enough or len(times) < n:
                return within
            return similar(
                collection.query(
                    query_embeddings=[vector],
                    n_results=n,
                    where=_within(period),
                    include=["distances"],
                )
            )

        return self._with(generation, instance_id, False, query, [])

    def vectors(self, generation: int, instance_id: UUID, ids: list[str]) -> dict[str, Any]:
        def get(collection: Any) -> dict[str, Any]:
            found = collection.get(ids=ids, include=["embeddings"])
            return dict(zip(found["ids"], found["embeddings"], strict=True))

        return self._with(generation, instance_id, False, get, {}) if ids else {}

    def ids(self, generation: int, instance_id: UUID) -> set[str]:
        return self._with(
            generation, instance_id, False, lambda c: set(c.get(include=[])["ids"]), set()
        )
