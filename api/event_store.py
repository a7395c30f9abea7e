"""The application on the configured event store, and nothing else: what the commands that need
only the events (`alma keys`, `replay`, `export`, `import`) open, without loading the read models,
the vector store, the models or the web stack."""

from __future__ import annotations

from alma.domain import Alma
from alma.settings import Settings
from alma.stores.keys import open_keys
from alma.stores.sql import creating_tables


def open_app(settings: Settings) -> Alma:
    """The application, its tables made first when they are missing."""
    with creating_tables(settings.event_store_env("events")):
        return event_app(settings)


def event_app(settings: Settings) -> Alma:
    """The application, on tables that exist (or are being made by the caller)."""
    return Alma(settings.event_store_env("events"), keys=open_keys)
