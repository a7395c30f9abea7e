"""Erasure by crypto-shredding: the events of a character, a lorebook or an instance (with its
memories and messages) are stored encrypted with a key of their own; erasing destroys the key."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import cast
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol, Snapshot
from eventsourcing.persistence import AggregateRecorder, Mapper, StoredEvent, Transcoder

from alma.domain.character import Character
from alma.domain.instance import Instance
from alma.domain.keystore import KeyStore
from alma.domain.lorebook import Lorebook
from alma.domain.memory import Memory
from alma.domain.topics import topics_of

MAGIC = (
    b"\x00alma-k1"  # JSON states start with "{": states written before encryption are told apart
)
_HEADER = len(MAGIC) + 16 + 12  # magic, scope id, nonce
_MEMORY_SCOPES = 100_000


class ShreddingMapper(Mapper[UUID]):
    """Encrypts the stored state of every event (and snapshot) of a character, or of an
    instance and its memories, with its scope's key: `MAGIC`, the scope id in clear, a nonce,
    then AES-256-GCM over the state, bound to the event's id, version and topic. The `Erased`
    events themselves stay in clear, so projections can read them after the key is gone."""

    keys: KeyStore
    recorder: AggregateRecorder

    def __init__(self, transcoder: Transcoder) -> None:
        super().__init__(transcoder)
        # A memory's instance, learned from its first event: its later events do not name it.
        self._memory_scopes: dict[UUID, UUID] = {}

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        stored = super().to_stored_event(domain_event)
        scope = self._scope_of(domain_event)
        if scope is None:
            return stored
        parent = getattr(domain_event, "character_id", None)
        created = isinstance(domain_event, Instance.Created)
        cipher = self.keys.cipher(scope, parent if created else None, create=True)
        nonce = os.urandom(12)
        sealed = cipher.encrypt(nonce, stored.state, _bound(stored))
        state = MAGIC + scope.bytes + nonce + sealed
        return replace(stored, state=state)

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        state = stored_event.state
        if state[: len(MAGIC)] == MAGIC:
            scope = UUID(bytes=bytes(state[len(MAGIC) : len(MAGIC) + 16]))
            cipher = self.keys.cipher(scope)
            nonce = state[_HEADER - 12 : _HEADER]
            plain = cipher.decrypt(nonce, state[_HEADER:], _bound(stored_event))
            stored_event = replace(stored_event, state=plain)
        domain_event = super().to_domain_event(stored_event)
        if isinstance(domain_event, Memory.Added):
            self._learn(domain_event.originator_id, getattr(domain_event, "instance_id"))  # noqa: B009
        return domain_event

    def _scope_of(self, event: object) -> UUID | None:
        if isinstance(event, Snapshot):
            return event.originator_id if event.topic in _SNAPSHOTTED else None
        if isinstance(event, Instance.Erased | Character.Erased | Lorebook.Erased):
            return None
        if isinstance(event, Instance.Event | Character.Event | Lorebook.Event):
            return event.originator_id
        if isinstance(event, Memory.Added):
            instance_id: UUID = getattr(event, "instance_id")  # noqa: B009
            self._learn(event.originator_id, instance_id)
            return instance_id
        if isinstance(event, Memory.Event):
            return self.memory_scope(event.originator_id)
        return None

    def memory_scope(self, memory_id: UUID) -> UUID:
        """From this process's memo, or from the memory's first stored event."""
        scope = self._memory_scopes.get(memory_id)
        if scope is None:
            (first,) = self.recorder.select_events(memory_id, lte=1)
            added = self.to_domain_event(first)
            scope = cast(UUID, getattr(added, "instance_id"))  # noqa: B009
        return scope

    def _learn(self, memory_id: UUID, instance_id: UUID) -> None:
        if len(self._memory_scopes) >= _MEMORY_SCOPES:
            self._memory_scopes.clear()  # a miss only costs a read of the memory's first event
        self._memory_scopes[memory_id] = instance_id


def _bound(stored: StoredEvent) -> bytes:
    """What the ciphertext is bound to: moved to another event, it does not decrypt."""
    return f"{stored.originator_id}/{stored.originator_version}/{stored.topic}".encode()


_SNAPSHOTTED = {*topics_of(Instance), *topics_of(Character)}


@dataclass(frozen=True)
class Unreadable:
    """An event of an erased scope, as the projections see it: where it was, nothing more."""

    originator_id: UUID | str
    originator_version: int
