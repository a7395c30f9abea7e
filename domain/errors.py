"""The domain's error types; the API maps each kind to one HTTP status."""

from __future__ import annotations

from uuid import UUID


class DomainError(Exception):
    """Base of every error a command or query can raise on purpose."""


class NotFound(DomainError):
    """No such aggregate for this tenant (or it belongs to another tenant). `field`: the request
    field that named it, when not the path."""

    def __init__(self, message: str = "", field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidInput(DomainError):
    """A value breaks a domain rule (empty name, text too long, version out of range)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NameTaken(DomainError):
    """An instance name is already used within the tenant."""


class VersionConflict(DomainError):
    """The caller's expected version is stale."""

    def __init__(self, current_version: int) -> None:
        super().__init__(f"the current version is {current_version}")
        self.current_version = current_version


class Erased(NotFound):
    """The key of this scope was destroyed: its events can never be read again."""

    def __init__(self, scope_id: UUID) -> None:
        super().__init__(f"{scope_id} was erased")
        self.scope_id = scope_id


class AlreadyStarted(DomainError):
    """Something only a conversation's first turn can do, asked of one already under way."""
