"""Read models that follow the event log: the listings and the memory index."""

from alma.projections.follower import Follower, ReadModel
from alma.projections.listings import (
    Listed,
    Listings,
    ListingView,
    PostgresListingView,
    SQLiteListingView,
)
from alma.projections.memory_index import AuditEntry, Doc, Hit, MemoryIndex
from alma.projections.vectors import VectorIndex, open_chroma

__all__ = [
    "AuditEntry",
    "Doc",
    "Follower",
    "Hit",
    "Listed",
    "ListingView",
    "Listings",
    "MemoryIndex",
    "PostgresListingView",
    "ReadModel",
    "SQLiteListingView",
    "VectorIndex",
    "open_chroma",
]
