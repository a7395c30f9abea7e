"""API keys: each belongs to one tenant, is stored only as a hash, and can be revoked."""

from __future__ import annotations

import hashlib
import secrets
from typing import ClassVar
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, DomainEvent, event

from alma.domain.actor import Actor

_KEYS = uuid5(NAMESPACE_URL, "https://alma.dev/api-keys")
KEY_PREFIX = "alma_"


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKey(Aggregate):
    """Its id derives from the key's hash, so presenting a key finds its record in one read."""

    Issued: ClassVar[type[DomainEvent]]

    @staticmethod
    def create_id(key_hash: str) -> UUID:
        return uuid5(_KEYS, key_hash)

    @classmethod
    def id_for(cls, secret: str) -> UUID:
        return cls.create_id(hash_secret(secret))

    @event("Issued")
    def __init__(self, key_hash: str, tenant: str, actor: Actor) -> None:
        self.key_hash = key_hash
        self.tenant = tenant
        self.revoked = False

    @event("Revoked")
    def revoke(self, actor: Actor) -> None:
        self.revoked = True
