"""Processes that follow the event log: the listings, the memory index and memory formation."""

from alma.projections.follower import Follower, ReadModel
from alma.projections.formation import MemoryFormation
from alma.projections.listings import (
    Listed,
    Listings,
    ListingView,
    PostgresListingView,
    SQLiteListingView,
)
from alma.projections.memory_index import AuditEntry, Doc, Hit, MemoryIndex
from alma.projections.sql import open_store
from alma.projections.vectors import VectorIndex, open_chroma

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
