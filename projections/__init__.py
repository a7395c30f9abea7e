"""Read models built by following the event log: listings now, the memory index next."""

from projections.follower import Follower
from projections.listings import (
    Listed,
    Listings,
    ListingView,
    PostgresListingView,
    SQLiteListingView,
)

__all__ = [
    "Follower",
    "Listed",
    "ListingView",
    "Listings",
    "PostgresListingView",
    "SQLiteListingView",
]
