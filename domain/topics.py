"""Event topics, the names under which event and aggregate classes are stored.

Before alma was installed as one package, its classes lived in top-level modules, so events and
snapshots recorded then carry topics such as `domain.instance:Instance.Created`. Those still
resolve (the `domain` prefix is registered as this package), and a query by topic asks for both.
"""

from __future__ import annotations

import sys

from eventsourcing.utils import get_topic, register_topic

_PACKAGE = "alma.domain"
_LEGACY = "domain"


def register_legacy_topics() -> None:
    """Make topics recorded under the old top-level name resolve to this package's classes."""
    register_topic(_LEGACY, sys.modules[_PACKAGE])


def topics_of(cls: type) -> list[str]:
    """Every topic a class's records may carry: its own, and the one recorded before the move."""
    topic = get_topic(cls)
    return [topic, _LEGACY + topic.removeprefix(_PACKAGE)]


def is_domain_topic(topic: str) -> bool:
    return topic.startswith((_PACKAGE + ".", _LEGACY + "."))
