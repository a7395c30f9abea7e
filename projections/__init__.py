"""Read models built by following the event log: listings and the memory index."""

from projections.follower import Follower, ReadModel
from projections.listings import (
    Listed,
    Listings,
    ListingView,
    PostgresListingView,
    SQLiteListingView,
)
from projections.memory_index import AuditEntry, Doc, Hit, MemoryIndex
from projections.sql import open_store
from projections.vectors import VectorIndex, open_chroma

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
    "open_store",
]
