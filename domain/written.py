"""Where in the log each instance's latest write stands, as this process wrote it.

A chat turn waits for the memory index to reach its instance's latest write, not the head of the
whole log, so that one busy tenant does not slow the others' turns. An instance's writes are its
own events and its memories' (a memory is an aggregate of its own, keyed to its instance).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Recording

from alma.domain.memory import Memory


class LastWrites:
    """The log position of the latest event this process saved for each instance (the most
    recently written `size` instances are kept)."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._positions: OrderedDict[UUID, int] = OrderedDict()
        self._lock = threading.Lock()

    def note(self, aggregates: Sequence[Any], recordings: Sequence[Recording[UUID]]) -> None:
        """After a save of `aggregates`: each one's instance stands at its last recording."""
        positions = {r.domain_event.originator_id: r.notification.id for r in recordings}
        with self._lock:
            for aggregate in aggregates:
                instance_id = (
                    aggregate.instance_id if isinstance(aggregate, Memory) else aggregate.id
                )
                position = positions.get(aggregate.id)
                if position is None:
                    # Saved without a position (a retry that found its own rows): unknown from
                    # now on, so a turn waits for the head of the log instead.
                    self._positions.pop(instance_id, None)
                    continue
                self._positions[instance_id] = max(position, self._positions.get(instance_id, 0))
                self._positions.move_to_end(instance_id)
            while len(self._positions) > self.size:
                self._positions.popitem(last=False)

    def of(self, instance_id: UUID) -> int | None:
        """The position of the instance's latest write through this process; None if it has
        not written to the instance since it started (or it fell out of the kept ones)."""
        with self._lock:
            return self._positions.get(instance_id)
