"""The erasure keys' port: one random AES-256-GCM key per scope (a character, or an instance
with its memories and messages). Erasing a scope replaces its key with a tombstone, so no later
write can give the scope a new key. The SQL adapters, beside the events in their own database,
are in `alma.stores.keys`; `MemoryKeys` serves the in-memory event store.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from uuid import UUID

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import ApplicationRecorder

from alma.domain.errors import Erased

CACHE_SIZE = 10_000
NO_ROW = object()  # what `_select` returns for a scope that never had a key


class KeyStore(ABC):
    """Keys by scope, with a bounded in-memory cache of their ciphers. A destroyed key leaves
    this process's cache at once; other processes keep theirs until it is evicted, but they
    only read a scope after the scope's `Erased` event fences it (see `Alma.owned`)."""

    def __init__(self, cache_size: int = CACHE_SIZE) -> None:
        self._cache: OrderedDict[UUID, AESGCM] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def cipher(self, scope: UUID, parent: UUID | None = None, create: bool = False) -> AESGCM:
        """The scope's cipher; `create` makes its key when it has none yet. Raises `Erased`
        when the key was destroyed (or, reading, never existed)."""
        with self._lock:
            cached = self._cache.get(scope)
            if cached is not None:
                self._cache.move_to_end(scope)
                return cached
        key = self._select(scope)
        if key is NO_ROW and create:
            self._insert(scope, parent, AESGCM.generate_key(bit_length=256))
            key = self._select(scope)
        if not isinstance(key, bytes):
            raise Erased(scope)
        cipher = AESGCM(key)
        with self._lock:
            self._cache[scope] = cipher
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return cipher

    def destroy(self, scope: UUID) -> None:
        """Replaces the key with a tombstone and wipes what the store keeps of it."""
        self.forget(scope)
        self._tombstone(scope)
        self._wipe()

    def forget(self, scope: UUID) -> None:
        with self._lock:
            self._cache.pop(scope, None)

    @abstractmethod
    def children(self, parent: UUID) -> list[UUID]:
        """The scopes made under `parent` (a character's instances)."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _select(self, scope: UUID) -> object:
        """The key's bytes, None for a tombstone, or NO_ROW."""

    @abstractmethod
    def _insert(self, scope: UUID, parent: UUID | None, key: bytes) -> None:
        """Adds the key unless the scope has a row already."""

    @abstractmethod
    def _tombstone(self, scope: UUID) -> None: ...

    @abstractmethod
    def _wipe(self) -> None: ...


class MemoryKeys(KeyStore):
    """For the in-memory event store (tests, experiments)."""

    def __init__(self) -> None:
        super().__init__()
        self._rows: dict[UUID, tuple[UUID | None, bytes | None]] = {}

    def children(self, parent: UUID) -> list[UUID]:
        return [scope for scope, (p, _) in self._rows.items() if p == parent]

    def close(self) -> None:
        """Nothing to release: the keys live in this object."""

    def _select(self, scope: UUID) -> object:
        row = self._rows.get(scope)
        return NO_ROW if row is None else row[1]

    def _insert(self, scope: UUID, parent: UUID | None, key: bytes) -> None:
        self._rows.setdefault(scope, (parent, key))

    def _tombstone(self, scope: UUID) -> None:
        self._rows[scope] = (self._rows.get(scope, (None, None))[0], None)

    def _wipe(self) -> None:
        """Nothing to wipe: a tombstone replaced the key in memory, and no file holds it."""


KeyStoreFactory = Callable[[ApplicationRecorder], KeyStore]
"""Opens the key store beside the application's event store, given the event store's recorder."""
