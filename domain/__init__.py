"""The event-sourced domain: characters, instances, API keys and the application service."""

from alma.domain.actor import Actor
from alma.domain.application import Alma, Keep, NewMessage, Reply, ToolResult
from alma.domain.character import Character
from alma.domain.errors import DomainError, InvalidInput, NameTaken, NotFound, VersionConflict
from alma.domain.instance import Instance, InstanceName
from alma.domain.keys import ApiKey
from alma.domain.lorebook import AttachedLorebooks, Lorebook
from alma.domain.memory import Memory
from alma.domain.topics import register_legacy_topics

register_legacy_topics()

__all__ = [
    "Actor",
    "Alma",
    "ApiKey",
    "AttachedLorebooks",
    "Character",
    "DomainError",
    "Instance",
    "InstanceName",
    "InvalidInput",
    "Keep",
    "Lorebook",
    "Memory",
    "NameTaken",
    "NewMessage",
    "NotFound",
    "Reply",
    "ToolResult",
    "VersionConflict",
]
