"""How events are shown to people: their type, actor, data, and diffs of memory text."""

from __future__ import annotations

import difflib
from typing import Any

from alma.domain import Actor

_ENVELOPE = {"originator_id", "originator_version", "timestamp", "originator_topic", "actor"}


def actor_of(event: Any) -> dict[str, str] | None:
    actor = getattr(event, "actor", None)
    return actor.as_dict() if isinstance(actor, Actor) else None


def event_data(event: Any) -> dict[str, Any]:
    """The event's own fields, without the envelope every event carries."""
    return {
        name: value
        for name, value in vars(event).items()
        if name not in _ENVELOPE and not name.startswith("_")
    }


def unified_diff(before: str, after: str, version: int) -> str:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"memory@{version - 1}",
        tofile=f"memory@{version}",
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)
