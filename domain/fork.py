"""Forking an instance: the fork starts with everything the original remembered at the fork
point (its memory text, voice, user's name, memory snippets and conversation, with what was
withdrawn from recall), recorded as the fork's own events that each point at the original they
copy; from there the two diverge."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from alma.domain.actor import Actor
from alma.domain.instance import Instance, speaker_of
from alma.domain.memory import Memory


@dataclass(frozen=True)
class ForkPoint:
    """Where a fork starts: the original's `version`, and the time up to which changes of its
    memory snippets count (None: every change so far). Snippets are aggregates of their own,
    so they are placed in time: as they stood when the original recorded `version`, or at the
    time the fork asked for."""

    version: int
    until: datetime | None


def copy_memories(originals: Iterable[Memory], fork: Instance, actor: Actor) -> list[Memory]:
    """One snippet of the fork's per original, as the original stood (when it happened and
    who said it too), with its provenance."""
    return [
        Memory.add(
            fork.tenant,
            fork.id,
            original.text,
            actor,
            original.metadata,
            original.importance,
            source={
                "forked_from": {
                    **_origin(original.instance_id, "memory_id", original.id),
                    "version": original.version,
                }
            },
            occurred_at=original.occurred_at,
            speaker=original.speaker,
        )
        for original in originals
    ]


def copy_conversation(
    said: Sequence[Any], fork: Instance, memory_ids: dict[str, str], actor: Actor
) -> None:
    """Records the original's messages, replies and tool results (`said`, in order) as the
    fork's own; a reply's memories become the fork's copies of them. The messages `said`
    withdraws from recall are withdrawn in the fork too, for the original's memory that was
    forgotten."""
    message_ids: dict[UUID, UUID] = {}
    for event in said:
        kind = type(event)
        if kind is Instance.MessagesWithdrawnFromRecall:
            copied = [message_ids.get(UUID(m)) for m in event.message_ids]
            copies = [str(copy) for copy in copied if copy is not None]
            if copies:
                origin = {"instance_id": str(event.originator_id)}
                fork.withdraw_from_recall(copies, event.memory_id, actor, forked_from=origin)
            continue
        origin = _origin(event.originator_id, "message_id", event.message_id)
        message_ids[event.message_id] = uuid4()
        if kind is Instance.ToolResultRecorded:
            fork.record_tool_result(
                message_ids[event.message_id],
                message_ids.get(event.in_reply_to, event.in_reply_to),
                event.tool_call_id,
                event.name,
                event.content,
                actor,
                forked_from=origin,
            )
        elif kind is Instance.MessageRecorded:
            fork.record_message(
                message_ids[event.message_id],
                event.role,
                event.content,
                event.sent_at,
                event.metadata,
                actor,
                forked_from=origin,
                name=speaker_of(event),
            )
        else:
            fork.record_reply(
                message_ids[event.message_id],
                message_ids.get(event.in_reply_to, event.in_reply_to),
                event.content,
                event.model,
                event.prompt_tokens,
                event.completion_tokens,
                event.latency_ms,
                [memory_ids.get(m, m) for m in event.memory_ids],
                event.prompt_sha256,
                event.interrupted,
                actor,
                forked_from=origin,
                name=speaker_of(event),
                lore_used=getattr(event, "lore_used", None),
                tool_calls=getattr(event, "tool_calls", None),
                memory_scores=getattr(event, "memory_scores", None),
            )


def _origin(instance_id: UUID, kind: str, original_id: UUID) -> dict[str, str]:
    return {"instance_id": str(instance_id), kind: str(original_id)}
