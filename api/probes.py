"""What /health and /metrics ask of the stores: how far behind each projection is, which events
they skipped, and whether the vector store answers."""

from __future__ import annotations

from dataclasses import dataclass

from alma.api.breaker import DatabaseBreaker
from alma.projections import Follower, PartitionLag, Skipped, Skips, VectorIndex


@dataclass(frozen=True)
class StoreProbes:
    followers: list[Follower]
    vectors: VectorIndex
    breaker: DatabaseBreaker | None  # on PostgreSQL
    skips: Skips

    def lags(self) -> dict[str, int] | None:
        """Each projection's lag, or None when the database cannot be reached (the breaker asks
        first, with a timeout of its own, so a down database answers at once)."""
        if self.breaker is not None and not self.breaker.probe():
            return None
        try:
            return {follower.name: follower.lag() for follower in self.followers}
        except Exception:
            return None

    def partitions(self) -> dict[str, list[PartitionLag]] | None:
        """Each projection's partitions: position, lag and owner; None when the database
        cannot be reached."""
        if self.breaker is not None and not self.breaker.probe():
            return None
        try:
            return {follower.name: follower.status() for follower in self.followers}
        except Exception:
            return None

    def skipped(self) -> list[Skipped] | None:
        """The events the projections could not apply, or None when the store cannot say."""
        if self.breaker is not None and not self.breaker.probe():
            return None
        try:
            return self.skips.all()
        except Exception:
            return None

    def vector_store_up(self) -> bool:
        try:
            self.vectors.client.heartbeat()
        except Exception:
            return False
        return True
