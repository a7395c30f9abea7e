"""The Instance (Instancia) aggregate: one living variation of a character with its own name
and memory, plus the name index that keeps instance names unique within a tenant."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar, cast
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, DomainEvent, event

from alma.domain.actor import Actor
from alma.domain.rules import name_key, valid_name, valid_text

_NAMES = uuid5(NAMESPACE_URL, "https://alma.dev/instance-names")


class Instance(Aggregate):
    Renamed: ClassVar[type[DomainEvent]]
    Archived: ClassVar[type[DomainEvent]]
    MemoryRewritten: ClassVar[type[DomainEvent]]
    MessageRecorded: ClassVar[type[DomainEvent]]
    ReplyRecorded: ClassVar[type[DomainEvent]]
    ToolResultRecorded: ClassVar[type[DomainEvent]]
    ReplyFailed: ClassVar[type[DomainEvent]]
    MessagesWithdrawnFromRecall: ClassVar[type[DomainEvent]]
    VoiceChanged: ClassVar[type[DomainEvent]]
    Erased: ClassVar[type[DomainEvent]]
    erased = False
    # Overrides the character's voice settings field by field; None: the character's as they are.
    voice: dict[str, Any] | None = None
    # The user's name in this instance's chats (a card's {{user}}); None: "User".
    user_name: str | None = None
    # The tool results recorded in the latest turn that had any: the user's message they follow
    # and their `tool_call_id`s (None for a legacy function's result, which has no id). State
    # from before tool results were recorded has none.
    tool_turn: UUID | None = None
    tool_call_ids: Sequence[str | None] = ()

    @event("Created")
    def __init__(
        self,
        tenant: str,
        character_id: UUID,
        name: str,
        memory: str,
        actor: Actor,
        forked_from: dict[str, Any] | None = None,
    ) -> None:
        self.tenant = tenant
        self.character_id = character_id
        self.name = name
        self.memory = memory
        self.forked_from = forked_from
        self.archived = False
        self.message_count = 0

    @classmethod
    def create(
        cls,
        tenant: str,
        character_id: UUID,
        name: str,
        memory: str,
        actor: Actor,
        forked_from: dict[str, Any] | None = None,
    ) -> Instance:
        return cls(
            tenant=tenant,
            character_id=character_id,
            name=valid_name(name),
            memory=valid_text(memory, "memory"),
            actor=actor,
            forked_from=forked_from,
        )

    @event("Renamed")
    def rename(self, name: str, actor: Actor) -> None:
        self.name = name

    @event("MemoryRewritten")
    def rewrite_memory(self, memory: str, actor: Actor) -> None:
        self.memory = memory

    @event("Archived")
    def archive(self, actor: Actor) -> None:
        self.archived = True

    @event("VoiceChanged")
    def change_voice(self, voice: dict[str, Any] | None, actor: Actor) -> None:
        self.voice = voice

    @event("UserNameChanged")
    def change_user_name(self, user_name: str | None, actor: Actor) -> None:
        self.user_name = user_name

    @event("Erased")
    def erase(self, actor: Actor) -> None:
        """Its key is destroyed next: none of its events, memories or messages can be read."""
        self.archived = True
        self.erased = True

    @event("MessageRecorded")
    def record_message(
        self,
        message_id: UUID,
        role: str,
        content: str,
        sent_at: datetime,
        metadata: dict[str, Any],
        actor: Actor,
        forked_from: dict[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        """One turn of the conversation; the conversation itself lives in the event stream and
        the read models, never in this aggregate's state. A fork's copy of its original's turn
        says which one in `forked_from` (events before forks carried conversations: None).
        `name`: who said it (OpenAI's message field; events from before it have none)."""
        self.message_count += 1

    @event("ReplyRecorded")
    def record_reply(
        self,
        message_id: UUID,
        in_reply_to: UUID,
        content: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: int,
        memory_ids: list[str],
        prompt_sha256: str,
        interrupted: bool,
        actor: Actor,
        forked_from: dict[str, str] | None = None,
        name: str | None = None,
        lore_used: list[str] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
        memory_scores: list[float] | None = None,
    ) -> None:
        """The character's reply, with what the audit needs to say why it said it: the model,
        its usage and latency, the memories in the prompt and a hash of the exact prompt.
        `name`: the instance's name when it replied (events from before it have none).
        `lore_used`: the lorebook entries in the prompt, `<lorebook id>:<entry id>` (events
        from before lorebooks have none). `tool_calls`: the tools the model called, in
        OpenAI's shape `{id, type, function: {name, arguments}}` (events from before they were
        kept have none; their content says the calls in words). `memory_scores`: each of
        `memory_ids`' relevance score when it was recalled, in the same order (events from
        before scores were kept have none)."""
        self.message_count += 1

    @event("ToolResultRecorded")
    def record_tool_result(
        self,
        message_id: UUID,
        in_reply_to: UUID,
        tool_call_id: str | None,
        name: str | None,
        content: str,
        actor: Actor,
        forked_from: dict[str, str] | None = None,
    ) -> None:
        """A tool's result that the client sent back for a call the character's reply made,
        in the turn that answers the user's message `in_reply_to`. `tool_call_id` names the
        call (None: a legacy function's result); `name` is the function's. Part of the
        conversation, not of what is recalled: no memory is formed from it."""
        if in_reply_to != self.tool_turn:
            self.tool_turn, self.tool_call_ids = in_reply_to, ()
        self.tool_call_ids = [*self.tool_call_ids, tool_call_id]

    def unrecorded_tool_results(self, in_reply_to: UUID, ids: Sequence[str | None]) -> list[int]:
        """Which of a turn's tool results, by their `tool_call_id`s, are not recorded yet: their
        indexes in `ids`. A legacy function's result has no id (None): those are told apart by
        their order, the first ones being the recorded ones."""
        recorded = list(self.tool_call_ids) if in_reply_to == self.tool_turn else []
        seen = {call_id for call_id in recorded if call_id is not None}
        functions = recorded.count(None)
        new = []
        for i, call_id in enumerate(ids):
            if call_id is None:
                if functions:
                    functions -= 1
                else:
                    new.append(i)
            elif call_id not in seen:
                seen.add(call_id)
                new.append(i)
        return new

    @event("ReplyFailed")
    def record_failure(self, in_reply_to: UUID, status: int, error: str, actor: Actor) -> None:
        """The model did not answer; the user's message stays recorded."""

    @event("MessagesWithdrawnFromRecall")
    def withdraw_from_recall(
        self,
        message_ids: list[str],
        memory_id: UUID,
        actor: Actor,
        forked_from: dict[str, str] | None = None,
    ) -> None:
        """Forgetting the memory `memory_id` took these messages out of what the instance
        recalls (search, the prompt's recent turns, memory formation); the conversation keeps
        them as they were said. A fork's copy names its original's instance in `forked_from`."""


def speaker_of(said: Any) -> str | None:
    """Who said a recorded message or reply: its `name`, which events from before names were
    kept do not have."""
    return getattr(said, "name", None)


class InstanceName(Aggregate):
    """Index aggregate: its id derives from (tenant, name), so two creations of one name collide
    in the event store and only one can be saved."""

    Registered: ClassVar[type[DomainEvent]]

    @staticmethod
    def create_id(tenant: str, key: str) -> UUID:
        return uuid5(_NAMES, f"{tenant}\x00{key}")

    @classmethod
    def id_for(cls, tenant: str, name: str) -> UUID:
        return cls.create_id(tenant, name_key(name))

    # `key`, the folded name, is in events recorded before erasure existed; newer ones hold only
    # the id derived from it (key None), so an erased instance's name is in no event.
    @event("Registered")
    def __init__(
        self, tenant: str, key: str | None, instance_id: UUID | None, actor: Actor
    ) -> None:
        self.tenant = tenant
        self.instance_id = instance_id

    @classmethod
    def register(cls, tenant: str, name: str, instance_id: UUID, actor: Actor) -> InstanceName:
        registered = cast(Any, cls.Registered)
        index_id = cls.id_for(tenant, name)
        return cls._create(
            registered, id=index_id, tenant=tenant, key=None, instance_id=instance_id, actor=actor
        )

    @event("Assigned")
    def assign(self, instance_id: UUID | None, actor: Actor) -> None:
        self.instance_id = instance_id
