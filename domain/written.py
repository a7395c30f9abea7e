"""Where in the log each instance's latest write stands, as this process wrote it.

A chat turn waits for the memory index to reach its instance's latest write, not the head of the
whole log, so that one busy tenant does not slow the others' turns. An instance's writes are its
own events and its memories' (a memory is an aggregate of its own, keyed to its instance).

The newest messages and replies are kept apart: a turn whose prompt holds them as its recent
turns leaves them out of recall anyway, so it need not wait for the index to embed them (under
many concurrent chats, that wait was most of a turn).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Recording

from alma.domain.instance import Instance
from alma.domain.memory import Memory

SAID = (Instance.MessageRecorded, Instance.ReplyRecorded)
NEWEST_SAID = 4  # two turns: a message and its reply, twice


@dataclass
class _Written:
    other: int  # the latest write that is not one of the newest messages
    said: deque[tuple[str, int]] = field(default_factory=lambda: deque(maxlen=NEWEST_SAID))

    def add(self, event: Any, position: int) -> None:
        if type(event) in SAID:  # (not isinstance: the event classes are typed as DomainEvent)
            if len(self.said) == NEWEST_SAID:
                self.other = max(self.other, self.said[0][1])  # pushed out: waited for
            self.said.append((str(event.message_id), position))
        else:
            self.other = max(self.other, position)

    def up_to(self, held: Collection[str]) -> int:
        return max(
            [
                self.other,
                *(position for message_id, position in self.said if message_id not in held),
            ]
        )


class LastWrites:
    """The log positions of the latest events this process saved for each instance (the most
    recently written `size` instances are kept)."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._written: OrderedDict[UUID, _Written] = OrderedDict()
        self._lock = threading.Lock()

    def note(self, aggregates: Sequence[Any], recordings: Sequence[Recording[UUID]]) -> None:
        """After a save of `aggregates`: each one's instance stands at its last recording."""
        instances = {a.id: a.instance_id if isinstance(a, Memory) else a.id for a in aggregates}
        recorded = {r.domain_event.originator_id for r in recordings}
        # Saved without a position (a retry that found its own rows): unknown from now on, so a
        # turn waits for the head of the log instead.
        unknown = {instances[a] for a in instances if a not in recorded}
        with self._lock:
            for instance_id in unknown:
                self._written.pop(instance_id, None)
            for recording in recordings:
                instance_id = instances.get(recording.domain_event.originator_id)
                if instance_id is None or instance_id in unknown:
                    continue
                position = recording.notification.id
                # What came before this process's first write to the instance is waited for.
                written = self._written.setdefault(instance_id, _Written(position - 1))
                written.add(recording.domain_event, position)
                self._written.move_to_end(instance_id)
            while len(self._written) > self.size:
                self._written.popitem(last=False)

    def of(self, instance_id: UUID, held: Collection[str] = ()) -> int | None:
        """The position of the instance's latest write through this process, leaving out its
        newest messages and replies named in `held` (message ids a prompt holds); None if it
        has not written to the instance since it started (or it fell out of the kept ones)."""
        with self._lock:
            written = self._written.get(instance_id)
            return None if written is None else written.up_to(held)
