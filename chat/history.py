"""What a turn's prompt holds of the conversation, so that retrieval does not bring it again.

The recent turns come from the instance's own events (`Alma.last_messages`), so a turn sees the
one before it however far the read models lag. A client that resends its history (every OpenAI
client does) has it matched to the turns the instance recorded: a matched turn is the recorded
one, and no resent turn comes back as a recollection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from alma.chat.prompt import Turn
from alma.projections import Doc

_ROLES = ("user", "assistant")


@dataclass(frozen=True)
class History:
    """The turns the prompt shows, and what retrieval leaves out because the prompt holds it:
    recorded messages by id, and any text as a line (the new message's too)."""

    turns: list[Turn]
    ids: frozenset[str]
    lines: frozenset[str]

    def recall_filter(self) -> Callable[[Doc], bool]:
        """For one search, best hits first: True for a source the prompt holds, or whose text
        a better hit already brings, so that no line comes twice."""
        seen = set(self.lines)

        def held(doc: Doc) -> bool:
            text = line(doc.text)
            if doc.doc_id in self.ids or text in seen:
                return True
            seen.add(text)
            return False

        return held


def history(said: Sequence[Any], resent: Sequence[Turn] | None, message: str) -> History:
    """`said`: the instance's last messages and replies, oldest first, as events. `resent`: the
    client's own history, oldest first, which stands in for them when given."""
    recorded = [(str(e.message_id), as_turn(e)) for e in said]
    recorded = [(message_id, turn) for message_id, turn in recorded if turn.role in _ROLES]
    if resent is None:
        turns, ids = [turn for _, turn in recorded], {message_id for message_id, _ in recorded}
    else:
        turns, ids = _matched(resent, recorded)
    lines = {line(turn.content) for turn in turns} | {line(message)}
    return History(turns, frozenset(ids), frozenset(lines))


def line(text: str) -> str:
    """A text as the prompt shows it on one line (as a recollection does), for comparison."""
    return " ".join(text.split())


def _matched(
    resent: Sequence[Turn], recorded: Sequence[tuple[str, Turn]]
) -> tuple[list[Turn], set[str]]:
    """Each resent turn as the recorded one with its role and text (the latest not yet taken),
    or as sent when the instance has no such turn; with the ids of those matched."""
    unmatched: dict[tuple[str, str], list[tuple[str, Turn]]] = {}
    for message_id, turn in recorded:
        unmatched.setdefault((turn.role, line(turn.content)), []).append((message_id, turn))
    turns: list[Turn] = []
    ids: set[str] = set()
    for turn in reversed(resent):
        candidates = unmatched.get((turn.role, line(turn.content)))
        if candidates:
            message_id, recorded_turn = candidates.pop()
            ids.add(message_id)
            turn = recorded_turn
        turns.append(turn)
    return turns[::-1], ids


def as_turn(event: Any) -> Turn:
    """A recorded message or reply (its event) as a turn of the conversation."""
    role = getattr(event, "role", "assistant")  # a reply's event names no role
    when = getattr(event, "sent_at", None) or event.timestamp
    return Turn(role, event.content, when)
