"""The event-sourced domain: characters, instances, API keys and the application service."""

from domain.actor import Actor
from domain.application import Alma, Keep, NewMessage, Reply
from domain.character import Character
from domain.errors import DomainError, InvalidInput, NameTaken, NotFound, VersionConflict
from domain.instance import Instance, InstanceName
from domain.keys import ApiKey
from domain.memory import Memory

__all__ = [
    "Actor",
    "Alma",
    "ApiKey",
    "Character",
    "DomainError",
    "Instance",
    "InstanceName",
    "InvalidInput",
    "Keep",
    "Memory",
    "NameTaken",
    "NewMessage",
    "NotFound",
    "Reply",
    "VersionConflict",
]
