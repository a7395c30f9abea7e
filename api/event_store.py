"""The application on the configured event store, and nothing else: what the commands that need
only the events (`alma keys`, `replay`, `export`, `import`) open, without loading the read models,
the vector store, the models or the web stack."""

from __future__ import annotations

from alma.domain import Alma
from alma.settings import Settings
from alma.stores.idempotency import fenced_recorder_topic
from alma.stores.keys import open_keys
from alma.stores.sql import creating_tables


def open_app(settings: Settings) -> Alma:
    """The application, its tables made first when they are missing."""
    with creating_tables(settings.event_store_env("events")):
        return event_app(settings)


def event_app(settings: Settings) -> Alma:
    """The application, on tables that exist (or are being made by the caller). Its recorder
    marks, in each write's own transaction, the Idempotency-Key of the request writing
    (`alma.stores.idempotency`)."""
    env = settings.event_store_env("events")
    return Alma({**env, "APPLICATION_RECORDER_TOPIC": fenced_recorder_topic(env)}, keys=open_keys)
