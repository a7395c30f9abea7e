"""Processes that follow the event log: the listings, the memory index and memory formation."""

from projections.follower import Follower, ReadModel
from projections.formation import MemoryFormation
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
    "MemoryFormation",
    "MemoryIndex",
    "PostgresListingView",
    "ReadModel",
    "SQLiteListingView",
    "VectorIndex",
    "open_chroma",
    "open_store",
]
