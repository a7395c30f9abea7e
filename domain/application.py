"""The application service: every command and query on characters, instances and keys."""

from __future__ import annotations

import hmac
import random
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeVar, cast
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate, DomainEvent
from eventsourcing.persistence import IntegrityError, JSONTranscoder, Mapper, Recording
from eventsourcing.popo import POPOApplicationRecorder

from alma.domain.actor import Actor, ActorAsDict
from alma.domain.aggregate_locks import AggregateLocks
from alma.domain.character import Character
from alma.domain.erasure import ShreddingMapper
from alma.domain.errors import (
    AlreadyStarted,
    Erased,
    InvalidInput,
    NameTaken,
    NotFound,
    VersionConflict,
)
from alma.domain.fork import ForkPoint, copy_conversation, copy_memories
from alma.domain.instance import Instance, InstanceName
from alma.domain.keys import ApiKey, hash_secret, new_secret
from alma.domain.keystore import KeyStore, KeyStoreFactory, MemoryKeys
from alma.domain.library import CachingApplication
from alma.domain.lorebook import MAX_ATTACHED, AttachedLorebooks, Lorebook
from alma.domain.memory import Memory
from alma.domain.patch import merge_patch
from alma.domain.rules import (
    as_utc,
    name_key,
    valid_message,
    valid_metadata,
    valid_name,
    valid_speaker,
    valid_tenant,
    valid_text,
)
from alma.domain.topics import topics_of
from alma.domain.written import SAID, LastWrites

A = TypeVar("A", bound=Aggregate)
T = TypeVar("T")

MAX_ATTEMPTS = 60


@dataclass(frozen=True)
class Reply:
    """A model's answer to one user message, with what the audit needs to explain it."""

    in_reply_to: UUID
    content: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    memory_ids: tuple[str, ...]
    prompt_sha256: str
    interrupted: bool = False
    lore_ids: tuple[str, ...] = ()  # the lorebook entries in the prompt
    memory_scores: tuple[float, ...] = ()  # each of `memory_ids`' score when recalled
    tool_calls: tuple[dict[str, Any], ...] = ()  # the tools it called, in OpenAI's shape
    id: UUID | None = None  # chosen before it is recorded, to name it first (None: a new one)


@dataclass(frozen=True)
class ToolResult:
    """What a tool answered to a call of the character's, as the client sends it back."""

    tool_call_id: str | None  # the call it answers; None: a legacy function's result
    name: str | None  # the function's
    content: str

    @classmethod
    def checked(
        cls, tool_call_id: str | None, name: str | None, content: str, where: str = ""
    ) -> ToolResult:
        """A result by the rules: its id and name those of names, its content a text's;
        `where` goes before the fields errors name (`messages[2].`)."""
        return cls(
            None if tool_call_id is None else valid_name(tool_call_id, where + "tool_call_id"),
            valid_speaker(name, where + "name"),
            valid_text(content, where + "content"),
        )


class Keep(Enum):
    """A field an edit leaves as it is, where None is a value of its own."""

    KEEP = "keep"


@dataclass(frozen=True)
class NewMessage:
    """A conversation turn to record: as sent by a client or imported from a transcript."""

    role: str
    content: str
    sent_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    name: str | None = None  # who said it; an assistant's is the instance's name if not given


class Alma(CachingApplication):
    name = "alma"
    snapshotting_intervals = {Character: 50, Instance: 50}  # noqa: RUF012 (library's API)

    def __init__(
        self, env: dict[str, str] | None = None, keys: KeyStoreFactory | None = None
    ) -> None:
        """`keys` opens the erasure keys beside the event store that `env` configures (see
        `alma.stores.keys.open_keys`); without it the events must be kept in memory too."""
        super().__init__(env)
        self.listeners: list[Callable[[], None]] = []
        self.last_writes = LastWrites()
        self._command = threading.local()
        self._turns = AggregateLocks()
        self.retries = 0  # commands tried again after losing a race to another writer
        self._retries_lock = threading.Lock()
        if keys is None and not isinstance(self.recorder, POPOApplicationRecorder):
            # Keys kept in memory would be gone at the next start, and every event they
            # encrypted unreadable with them.
            super().close()
            raise ValueError(
                "events kept in a database need their erasure keys there: pass "
                "keys=alma.stores.keys.open_keys"
            )
        self.keys: KeyStore = MemoryKeys() if keys is None else keys(self.recorder)
        assert isinstance(self.mapper, ShreddingMapper)
        self.mapper.keys = self.keys
        self.mapper.recorder = self.recorder

    def construct_mapper(self) -> Mapper[UUID]:
        return ShreddingMapper(self.construct_transcoder())

    def close(self) -> None:
        self.keys.close()
        super().close()

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(ActorAsDict())

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        recordings = super().save(*objs, **kwargs)
        self.last_writes.note([o for o in objs if isinstance(o, Aggregate)], recordings)
        for listener in self.listeners:
            listener()
        return recordings

    # Characters

    def create_character(self, tenant: str, fields: dict[str, Any], actor: Actor) -> Character:
        character = Character.create(tenant, fields, actor)
        self.save(character)
        return character

    def edit_character(
        self,
        tenant: str,
        character_id: UUID,
        changes: dict[str, Any],
        actor: Actor,
        expected_version: int | None = None,
    ) -> Character:
        def attempt() -> Character:
            character = self._current(Character, tenant, character_id, expected_version)
            character.edit(changes, actor)
            self.save(character)
            return character

        return self._retrying(attempt)

    def archive_character(
        self, tenant: str, character_id: UUID, actor: Actor, expected_version: int | None = None
    ) -> None:
        def attempt() -> None:
            character = self._current(Character, tenant, character_id, expected_version)
            character.archive(actor)
            self.save(character)

        self._retrying(attempt)

    def erase_character(self, tenant: str, character_id: UUID, actor: Actor) -> None:
        """Erases the character and every instance made from it (see `erase_instance`)."""
        self.owned(Character, tenant, character_id, None, erased=True)
        for instance_id in self.keys.children(character_id):
            with suppress(NotFound):
                self._erase(Instance, tenant, instance_id, actor)
        self._erase(Character, tenant, character_id, actor)

    def character(
        self,
        tenant: str,
        character_id: UUID,
        version: int | None = None,
        at: datetime | None = None,
    ) -> Character:
        return self._state(Character, tenant, character_id, version, at)

    # Instances

    def create_instance(
        self,
        tenant: str,
        character_id: UUID,
        name: str,
        memory: str,
        actor: Actor,
        forked_from: dict[str, Any] | None = None,
        voice: dict[str, Any] | None = None,
        copy: Callable[[Instance], list[Aggregate]] | None = None,
        user_name: str | None = None,
    ) -> Instance:
        """`copy` gives what a fork brings with it, saved in the same transaction. `user_name`:
        the user's name in the instance's chats (a card's {{user}})."""
        self._current(Character, tenant, character_id)
        user_name = valid_speaker(user_name, "user_name")

        def attempt() -> Instance:
            instance = Instance.create(tenant, character_id, name, memory, actor, forked_from)
            if voice is not None:
                instance.change_voice(voice, actor)
            if user_name is not None:
                instance.change_user_name(user_name, actor)
            brought = copy(instance) if copy is not None else []
            index = self._claim_name(tenant, instance.name, instance.id, actor)
            self.save(instance, index, *brought)
            return instance

        return self._retrying(attempt)

    def edit_instance(
        self,
        tenant: str,
        instance_id: UUID,
        actor: Actor,
        name: str | Keep | None = Keep.KEEP,
        memory: str | Keep | None = Keep.KEEP,
        expected_version: int | None = None,
        voice: dict[str, Any] | Keep | None = Keep.KEEP,
        user_name: str | Keep | None = Keep.KEEP,
    ) -> Instance:
        """A merge patch (RFC 7396) of the instance: KEEP leaves a field as it is, None clears
        the memory text (""), the voice overrides (the character's voice again) and the user's
        name ("User" again) and is refused for the name. `voice` merges into the instance's
        overrides of the character's voice settings."""
        if name is not Keep.KEEP:
            name = valid_name(name)
        if memory is not Keep.KEEP:
            memory = valid_text(memory or "", "memory")
        if user_name is not Keep.KEEP:
            user_name = valid_speaker(user_name, "user_name")

        def attempt() -> Instance:
            instance = self._current(Instance, tenant, instance_id, expected_version)
            changed: list[Aggregate] = [instance]
            if name is not Keep.KEEP and name != instance.name:
                if name_key(name) != name_key(instance.name):
                    changed.append(self._claim_name(tenant, name, instance.id, actor))
                    changed.append(self._release_name(tenant, instance.name, actor))
                instance.rename(name, actor)
            if memory is not Keep.KEEP and memory != instance.memory:
                instance.rewrite_memory(memory, actor)
            new_voice = instance.voice if voice is Keep.KEEP else merge_patch(instance.voice, voice)
            if new_voice != instance.voice:
                instance.change_voice(new_voice, actor)
            if user_name is not Keep.KEEP and user_name != instance.user_name:
                instance.change_user_name(user_name, actor)
            self.save(*changed)
            return instance

        return self._retrying(attempt)

    def archive_instance(
        self, tenant: str, instance_id: UUID, actor: Actor, expected_version: int | None = None
    ) -> None:
        def attempt() -> None:
            instance = self._current(Instance, tenant, instance_id, expected_version)
            instance.archive(actor)
            self.save(instance, self._release_name(tenant, instance.name, actor))

        self._retrying(attempt)

    def erase_instance(self, tenant: str, instance_id: UUID, actor: Actor) -> None:
        """A hard delete: records `Erased` (which holds no text), then destroys the instance's
        key, after which none of its events, memories or messages can be read by anyone."""
        self._erase(Instance, tenant, instance_id, actor)

    def fork_point(
        self,
        tenant: str,
        instance_id: UUID,
        at_version: int | None = None,
        at: datetime | None = None,
    ) -> ForkPoint:
        """Where a fork of the instance at `at_version` or at time `at` (default: now) starts."""
        source = self._state(Instance, tenant, instance_id, at_version, at)
        if at is None and at_version is None:
            return ForkPoint(source.version, None)
        return ForkPoint(source.version, at or self._recorded_at(instance_id, source.version))

    def fork_instance(
        self,
        tenant: str,
        instance_id: UUID,
        name: str,
        actor: Actor,
        point: ForkPoint,
        memories: Sequence[tuple[UUID, int]] = (),
    ) -> Instance:
        """A new instance of the same character with what this one remembered at `point`: its
        memory text and voice, its conversation up to that version (with what was withdrawn
        from recall by then), and the `memories` (snippet ids, each at its version then), all
        saved at once. The lorebooks attached to it now are attached to the fork."""
        source = self.owned(Instance, tenant, instance_id, point.version)
        originals = [self.owned(Memory, tenant, m, version) for m, version in memories]
        if any(m.instance_id != instance_id or m.forgotten for m in originals):
            raise InvalidInput("only the instance's own live memories can be copied", "memories")
        said = [
            e
            for e in self.events.get(instance_id, lte=point.version)
            if isinstance(
                e, (*SAID, Instance.ToolResultRecorded, Instance.MessagesWithdrawnFromRecall)
            )
        ]

        attached = self._attached(tenant, instance_id)

        def copy(fork: Instance) -> list[Aggregate]:
            copies: list[Aggregate] = list(copy_memories(originals, fork, actor))
            ids = {str(o.id): str(c.id) for o, c in zip(originals, copies, strict=True)}
            copy_conversation(said, fork, ids, actor)
            if attached is not None and attached.lorebook_ids:
                lore = AttachedLorebooks(tenant=tenant, owner_id=fork.id, actor=actor)
                lore.change(attached.lorebook_ids, actor)
                copies.append(lore)
            return copies

        return self.create_instance(
            tenant,
            source.character_id,
            name,
            source.memory,
            actor,
            forked_from={"instance_id": str(source.id), "version": source.version},
            voice=source.voice,
            copy=copy,
            user_name=source.user_name,
        )

    def instance(
        self, tenant: str, instance_id: UUID, version: int | None = None, at: datetime | None = None
    ) -> Instance:
        return self._state(Instance, tenant, instance_id, version, at)

    def instance_id_by_name(self, tenant: str, name: str) -> UUID:
        try:
            index: InstanceName = self.repository.get(InstanceName.id_for(tenant, name))
        except AggregateNotFoundError:
            raise NotFound(f"no instance is named {name!r}") from None
        if index.instance_id is None:
            raise NotFound(f"no instance is named {name!r}")
        assert isinstance(index.instance_id, UUID)
        return index.instance_id

    def import_messages(
        self,
        tenant: str,
        instance_id: UUID,
        messages: list[NewMessage],
        actor: Actor,
        opening: bool = False,
    ) -> list[UUID]:
        """Records past turns as they were (no model is called); returns their ids. A message
        of the assistant's without a `name` is named after the instance, as its replies are.
        `opening`: only as the first messages of the conversation (AlreadyStarted otherwise,
        also when another write wins the race to be first)."""
        checked = [
            (
                *valid_message(m.role, m.content),
                None if m.sent_at is None else as_utc(m.sent_at),
                valid_metadata(m.metadata or {}),
                valid_speaker(m.name, "name"),
            )
            for m in messages
        ]

        def attempt() -> list[UUID]:
            instance = self._current(Instance, tenant, instance_id)
            if opening and instance.message_count:
                raise AlreadyStarted(
                    f"instance {instance_id} has a conversation already: a greeting opens one"
                )
            now = datetime.now(UTC)
            ids = []
            for role, content, sent_at, metadata, name in checked:
                if name is None and role == "assistant":
                    name = instance.name
                ids.append(uuid4())
                instance.record_message(
                    ids[-1], role, content, sent_at or now, metadata, actor, name=name
                )
            self.save(instance)
            return ids

        return self._retrying(attempt)

    def record_message(
        self,
        tenant: str,
        instance_id: UUID,
        content: str,
        actor: Actor,
        metadata: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> UUID:
        """Records what the user says in a chat turn, now, before the model is asked; returns
        its id. It is the event an imported message makes, so every reader takes both alike.
        `name`: who says it (OpenAI's message field), if the client says."""
        role, text = valid_message("user", content)
        checked = valid_metadata(metadata or {})
        speaker = valid_speaker(name, "name")
        message_id = uuid4()

        def attempt() -> UUID:
            instance = self._current(Instance, tenant, instance_id)
            instance.record_message(
                message_id, role, text, datetime.now(UTC), checked, actor, name=speaker
            )
            self.save(instance)
            return message_id

        return self._retrying(attempt)

    def record_reply(
        self, tenant: str, instance_id: UUID, reply: Reply, actor: Actor
    ) -> tuple[UUID, int]:
        """Records the character's answer to `reply.in_reply_to`; returns the reply's id and
        the instance's version with it."""
        message_id = reply.id or uuid4()

        def attempt() -> tuple[UUID, int]:
            instance = self._current(Instance, tenant, instance_id)
            instance.record_reply(
                message_id,
                reply.in_reply_to,
                reply.content,
                reply.model,
                reply.prompt_tokens,
                reply.completion_tokens,
                reply.latency_ms,
                list(reply.memory_ids),
                reply.prompt_sha256,
                reply.interrupted,
                actor,
                name=instance.name,
                lore_used=list(reply.lore_ids),
                tool_calls=list(reply.tool_calls),
                memory_scores=list(reply.memory_scores),
            )
            self.save(instance)
            return message_id, instance.version

        return self._retrying(attempt)

    def record_tool_results(
        self,
        tenant: str,
        instance_id: UUID,
        in_reply_to: UUID,
        results: Sequence[ToolResult],
        actor: Actor,
    ) -> list[UUID]:
        """Records the tool results of the turn that answers `in_reply_to` that it has not
        recorded yet (a client resends every earlier one with each request): once per
        `tool_call_id`, a legacy function's by its order. Returns the new ones' ids."""
        checked = [ToolResult.checked(r.tool_call_id, r.name, r.content) for r in results]

        def attempt() -> list[UUID]:
            instance = self._current(Instance, tenant, instance_id)
            ids = [r.tool_call_id for r in checked]
            new = [checked[i] for i in instance.unrecorded_tool_results(in_reply_to, ids)]
            recorded = [uuid4() for _ in new]
            for message_id, result in zip(recorded, new, strict=True):
                instance.record_tool_result(
                    message_id, in_reply_to, result.tool_call_id, result.name, result.content, actor
                )
            if recorded:
                self.save(instance)
            return recorded

        return self._retrying(attempt)

    def record_failure(
        self,
        tenant: str,
        instance_id: UUID,
        in_reply_to: UUID,
        status: int,
        error: str,
        actor: Actor,
    ) -> None:
        def attempt() -> None:
            instance = self._current(Instance, tenant, instance_id)
            instance.record_failure(in_reply_to, status, error, actor)
            self.save(instance)

        self._retrying(attempt)

    # Lorebooks

    def create_lorebook(
        self,
        tenant: str,
        settings: dict[str, Any],
        entries: list[dict[str, Any]],
        actor: Actor,
    ) -> Lorebook:
        lorebook = Lorebook.create(tenant, settings, entries, actor)
        self.save(lorebook)
        return lorebook

    def edit_lorebook(
        self,
        tenant: str,
        lorebook_id: UUID,
        changes: dict[str, Any],
        actor: Actor,
        expected_version: int | None = None,
    ) -> Lorebook:
        """A merge patch of the book's own fields (not its entries)."""
        return self._changing_lorebook(
            tenant, lorebook_id, expected_version, lambda book: book.edit(changes, actor)
        )

    def add_lorebook_entry(
        self,
        tenant: str,
        lorebook_id: UUID,
        fields: dict[str, Any],
        actor: Actor,
        expected_version: int | None = None,
    ) -> tuple[Lorebook, dict[str, Any]]:
        added: list[dict[str, Any]] = []

        def change(book: Lorebook) -> None:
            added[:] = [book.new_entry(fields, actor)]

        book = self._changing_lorebook(tenant, lorebook_id, expected_version, change)
        return book, added[0]

    def edit_lorebook_entry(
        self,
        tenant: str,
        lorebook_id: UUID,
        entry_id: int,
        changes: dict[str, Any],
        actor: Actor,
        expected_version: int | None = None,
    ) -> tuple[Lorebook, dict[str, Any]]:
        """A merge patch of one entry."""
        edited: list[dict[str, Any]] = []

        def change(book: Lorebook) -> None:
            edited[:] = [book.edit_entry(self._entry_of(book, entry_id), changes, actor)]

        book = self._changing_lorebook(tenant, lorebook_id, expected_version, change)
        return book, edited[0]

    def remove_lorebook_entry(
        self,
        tenant: str,
        lorebook_id: UUID,
        entry_id: int,
        actor: Actor,
        expected_version: int | None = None,
    ) -> None:
        self._changing_lorebook(
            tenant,
            lorebook_id,
            expected_version,
            lambda book: book.remove_entry(self._entry_of(book, entry_id), actor),
        )

    def archive_lorebook(
        self, tenant: str, lorebook_id: UUID, actor: Actor, expected_version: int | None = None
    ) -> None:
        """It stops activating wherever it is attached; its history stays."""
        self._changing_lorebook(
            tenant, lorebook_id, expected_version, lambda book: book.archive(actor)
        )

    def erase_lorebook(self, tenant: str, lorebook_id: UUID, actor: Actor) -> None:
        self._erase(Lorebook, tenant, lorebook_id, actor)

    def lorebook(
        self,
        tenant: str,
        lorebook_id: UUID,
        version: int | None = None,
        at: datetime | None = None,
    ) -> Lorebook:
        return self._state(Lorebook, tenant, lorebook_id, version, at)

    def attach_lorebooks(
        self,
        tenant: str,
        owner_type: type[Character] | type[Instance],
        owner_id: UUID,
        lorebook_ids: Sequence[UUID],
        actor: Actor,
    ) -> list[UUID]:
        """Sets the lorebooks attached to a character or an instance (all of this tenant's and
        live), in the order given; returns them."""
        wanted = list(dict.fromkeys(lorebook_ids))
        if len(wanted) > MAX_ATTACHED:
            raise InvalidInput(f"at most {MAX_ATTACHED} lorebooks can be attached", "lorebook_ids")

        def attempt() -> list[UUID]:
            self._current(owner_type, tenant, owner_id)
            for lorebook_id in wanted:
                self._current(Lorebook, tenant, lorebook_id)
            attached = self._attached(tenant, owner_id)
            if attached is None:
                attached = AttachedLorebooks(tenant=tenant, owner_id=owner_id, actor=actor)
            if attached.lorebook_ids != wanted:
                attached.change(wanted, actor)
                self.save(attached)
            return wanted

        return self._retrying(attempt)

    def attached_lorebooks(
        self, tenant: str, owner_type: type[Character] | type[Instance], owner_id: UUID
    ) -> list[UUID]:
        """The live lorebooks attached to a character or an instance, in their order."""
        self._current(owner_type, tenant, owner_id)
        return [book.id for book in self._live_lorebooks(tenant, [owner_id])]

    def lorebooks_in_use(self, tenant: str, instance: Instance) -> list[Lorebook]:
        """What a chat turn with the instance scans: its character's lorebooks, then its own."""
        return self._live_lorebooks(tenant, [instance.character_id, instance.id])

    def _live_lorebooks(self, tenant: str, owner_ids: Sequence[UUID]) -> list[Lorebook]:
        ids: list[UUID] = []
        for owner_id in owner_ids:
            attached = self._attached(tenant, owner_id)
            ids += attached.lorebook_ids if attached is not None else []
        books = []
        for lorebook_id in dict.fromkeys(ids):
            with suppress(NotFound):  # archived or erased since: it no longer activates
                books.append(self._current(Lorebook, tenant, lorebook_id))
        return books

    def _attached(self, tenant: str, owner_id: UUID) -> AttachedLorebooks | None:
        try:
            attached = self.repository.get(AttachedLorebooks.create_id(tenant, owner_id))
        except AggregateNotFoundError:
            return None
        assert isinstance(attached, AttachedLorebooks)
        return attached

    def _changing_lorebook(
        self,
        tenant: str,
        lorebook_id: UUID,
        expected_version: int | None,
        change: Callable[[Lorebook], None],
    ) -> Lorebook:
        def attempt() -> Lorebook:
            book = self._current(Lorebook, tenant, lorebook_id, expected_version)
            change(book)
            self.save(book)
            return book

        return self._retrying(attempt)

    @staticmethod
    def _entry_of(book: Lorebook, entry_id: int) -> int:
        if entry_id not in book.entries:
            raise NotFound(f"no entry {entry_id} in lorebook {book.id}")
        return entry_id

    # Memories (snippets)

    def add_memory(
        self,
        tenant: str,
        instance_id: UUID,
        text: str,
        actor: Actor,
        metadata: dict[str, Any] | None = None,
        importance: float | None = None,
        source: dict[str, Any] | None = None,
        memory_id: UUID | None = None,
        occurred_at: datetime | None = None,
        speaker: str | None = None,
    ) -> Memory:
        """`occurred_at`: when it happened (default: now, when it is recorded); `speaker`: who
        said it, if anyone."""
        memory = Memory.add(
            tenant,
            instance_id,
            text,
            actor,
            metadata,
            importance,
            source,
            memory_id,
            occurred_at,
            speaker,
        )
        self._current(Instance, tenant, instance_id)
        self.save(memory)
        return memory

    def revise_memory(
        self,
        tenant: str,
        instance_id: UUID,
        memory_id: UUID,
        actor: Actor,
        text: str | None = None,
        metadata: dict[str, Any] | None = None,
        importance: float | None = None,
        source: dict[str, Any] | None = None,
    ) -> Memory:
        return self._revising(
            tenant,
            instance_id,
            memory_id,
            lambda memory: memory.change(actor, text, metadata, importance, source),
        )

    def patch_memory(
        self,
        tenant: str,
        instance_id: UUID,
        memory_id: UUID,
        actor: Actor,
        patch: dict[str, Any],
    ) -> Memory:
        """Applies a merge patch (RFC 7396) of `text`, `metadata`, `importance`, `occurred_at`
        and `speaker`."""
        return self._revising(
            tenant, instance_id, memory_id, lambda memory: memory.merge(patch, actor)
        )

    def _revising(
        self,
        tenant: str,
        instance_id: UUID,
        memory_id: UUID,
        change: Callable[[Memory], None],
    ) -> Memory:
        def attempt() -> Memory:
            memory = self.memory(tenant, instance_id, memory_id)
            change(memory)
            self.save(memory)
            return memory

        return self._retrying(attempt)

    def forget_memory(
        self,
        tenant: str,
        instance_id: UUID,
        memory_id: UUID,
        actor: Actor,
        source: dict[str, Any] | None = None,
        withdraw: Sequence[UUID] = (),
    ) -> None:
        """Forgets the memory; with `withdraw`, takes those messages of the instance out of
        recall in the same transaction (`Instance.withdraw_from_recall`)."""
        withdrawn = list(dict.fromkeys(str(message_id) for message_id in withdraw))

        def attempt() -> None:
            memory = self.memory(tenant, instance_id, memory_id)
            memory.forget(actor, source)
            changed: list[Aggregate] = [memory]
            if withdrawn:
                instance = self._current(Instance, tenant, instance_id)
                instance.withdraw_from_recall(withdrawn, memory_id, actor)
                changed.append(instance)
            self.save(*changed)

        self._retrying(attempt)

    def memory(self, tenant: str, instance_id: UUID, memory_id: UUID) -> Memory:
        """A live memory of a live instance of this tenant; anything else is not found."""
        self._current(Instance, tenant, instance_id)
        memory = self.owned(Memory, tenant, memory_id, None)
        if memory.instance_id != instance_id or memory.forgotten:
            raise NotFound(f"no memory {memory_id} in instance {instance_id}")
        return memory

    # Events: replay and audit

    def stream(
        self,
        tenant: str,
        aggregate_type: type[Aggregate],
        aggregate_id: UUID,
        after_version: int = 0,
        limit: int | None = None,
        event_type: str | None = None,
    ) -> Iterator[DomainEvent]:
        """The aggregate's own events in order (archived aggregates included: history stays)."""
        self.owned(aggregate_type, tenant, aggregate_id, None)
        yielded = 0
        position = after_version
        while limit is None or yielded < limit:
            page = list(self.events.get(aggregate_id, gt=position, limit=500))
            for stored in page:
                domain_event = cast(DomainEvent, stored)
                position = domain_event.originator_version
                if event_type is None or type(domain_event).__name__ == event_type:
                    yield domain_event
                    yielded += 1
                    if limit is not None and yielded >= limit:
                        return
            if len(page) < 500:
                return

    def last_messages(
        self, instance_id: UUID, limit: int, up_to: int | None = None
    ) -> list[DomainEvent]:
        """The instance's last `limit` messages and replies (its `MessageRecorded` and
        `ReplyRecorded` events) that are not withdrawn from recall, oldest first: read from its
        own events, so current however far the read models lag. `up_to`: the last as of that
        version of the instance (withdrawals after it count too)."""
        found: list[DomainEvent] = []
        # Read newest first, a withdrawal comes before the messages it names.
        withdrawn: set[str] = set()
        below: int | None = None
        page = limit + 8  # a few failures or edits between the messages
        while len(found) < limit:
            events: list[Any] = list(self.events.get(instance_id, lte=below, desc=True, limit=page))
            for event in events:
                kind = type(event)  # (not isinstance: the event classes are typed DomainEvent)
                if kind is Instance.MessagesWithdrawnFromRecall:
                    withdrawn.update(event.message_ids)
                elif (
                    kind in SAID
                    and str(event.message_id) not in withdrawn
                    and (up_to is None or event.originator_version <= up_to)
                ):
                    found.append(event)
                    if len(found) == limit:
                        break
            if len(events) < page:
                break
            below = events[-1].originator_version - 1
        return found[::-1]

    def reply(self, tenant: str, instance_id: UUID, reply_id: UUID) -> DomainEvent:
        """The instance's recorded reply `reply_id` (its `ReplyRecorded` event), looked for
        newest first; NotFound when the instance (of this tenant) has none."""
        self.owned(Instance, tenant, instance_id, None)
        below: int | None = None
        while True:
            events: list[Any] = list(self.events.get(instance_id, lte=below, desc=True, limit=500))
            for event in events:
                kind = type(event)  # (not isinstance: the event classes are typed DomainEvent)
                if kind is Instance.ReplyRecorded and str(event.message_id) == str(reply_id):
                    return cast(DomainEvent, event)
            if len(events) < 500:
                raise NotFound(f"instance {instance_id} has no reply {reply_id}")
            below = events[-1].originator_version - 1

    def said_at(self, tenant: str, instance_id: UUID, position: int) -> DomainEvent:
        """The instance's event at log position `position` (where the conversation read model
        found a message); NotFound when it is another's."""
        self.owned(Instance, tenant, instance_id, None)
        for notification in self.recorder.select_notifications(start=position, limit=1):
            event = self.mapper.to_domain_event(notification)
            if notification.id == position and event.originator_id == instance_id:
                return cast(DomainEvent, event)
        raise NotFound(f"instance {instance_id} has no event at {position}")

    def memory_then_and_now(
        self, tenant: str, memory_id: UUID, at: datetime
    ) -> tuple[Memory, Memory]:
        """A memory as it was at `at` and as it is now (forgotten or not); NotFound when it did
        not exist then."""
        now = self.owned(Memory, tenant, memory_id, None)
        version = self._version_at(memory_id, now.version, as_utc(at, "at"))
        return self.owned(Memory, tenant, memory_id, version), now

    def written_up_to(self, instance_id: UUID, held: Collection[str] = ()) -> int:
        """The log position a reader must reach to hold every write about the instance: its
        latest write through this process, else (none since this process started) the head.
        `held`: ids of the newest messages a prompt already holds, not waited for."""
        position = self.last_writes.of(instance_id, held)
        return position if position is not None else self.recorder.max_notification_id() or 0

    # API keys

    def issue_key(self, tenant: str, actor: Actor) -> tuple[UUID, str]:
        secret = new_secret()
        key = ApiKey(key_hash=hash_secret(secret), tenant=valid_tenant(tenant), actor=actor)
        self.save(key)
        return key.id, secret

    def revoke_key(self, key_id: UUID, actor: Actor) -> None:
        def attempt() -> None:
            try:
                key: Aggregate = self.repository.get(key_id)
            except AggregateNotFoundError:
                raise NotFound(f"no API key {key_id}") from None
            if not isinstance(key, ApiKey):
                raise NotFound(f"no API key {key_id}")
            if not key.revoked:
                key.revoke(actor)
                self.save(key)

        self._retrying(attempt)

    def authenticate(self, secret: str) -> ApiKey | None:
        """The live key for this secret, or None. The lookup is by hash, so the secret itself is
        never compared or stored."""
        try:
            # Read only: the cached key itself, not a copy.
            key: Aggregate = self.repository.get(ApiKey.id_for(secret), deepcopy_from_cache=False)
        except AggregateNotFoundError:
            return None
        # The id already derives from the hash; comparing it too, in constant time, keeps a
        # lookup that found something else from letting anyone in.
        if not isinstance(key, ApiKey) or key.revoked:
            return None
        if not hmac.compare_digest(key.key_hash, hash_secret(secret)):
            return None
        return key

    def has_keys(self) -> bool:
        issued = topics_of(ApiKey.Issued)
        return bool(self.recorder.select_notifications(start=None, limit=1, topics=issued))

    # Internals

    def _erase(
        self, aggregate_type: type[A], tenant: str, aggregate_id: UUID, actor: Actor
    ) -> None:
        def attempt() -> None:
            aggregate: Any = self.owned(aggregate_type, tenant, aggregate_id, None, erased=True)
            if aggregate.erased:
                return  # recorded before a crash: the key goes now
            changed = [aggregate]
            if isinstance(aggregate, Instance) and not aggregate.archived:
                changed.append(self._release_name(tenant, aggregate.name, actor))
            aggregate.erase(actor)
            self.save(*changed)

        self._retrying(attempt)
        self.keys.destroy(aggregate_id)
        self.repository.forget(aggregate_id)

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """Optimistic concurrency. The first try works on this process's last copy of the
        aggregates (no read from the store); a save that lost a race is re-run on fresh state,
        so no concurrent update is lost; a stale If-Match fails in `attempt` itself with 409.
        Within this process, commands on one aggregate take turns (`AggregateLocks`: the first
        aggregate a command loads with `_current` is the one whose lock it waits for), so only
        another process's write makes a command try again."""
        self._command.trust_cache = True
        self._command.taking_turns = True
        try:
            for n in range(MAX_ATTEMPTS):
                try:
                    return attempt()
                except IntegrityError:
                    self._command.trust_cache = False
                    with self._retries_lock:
                        self.retries += 1
                    time.sleep(random.uniform(0, min(0.05, 0.002 * 2**n)))
            return attempt()
        finally:
            self._command.trust_cache = False
            self._command.taking_turns = False
            turn, self._command.turn = getattr(self._command, "turn", None), None
            if turn is not None:
                turn.release()

    def _claim_name(self, tenant: str, name: str, instance_id: UUID, actor: Actor) -> InstanceName:
        try:
            index: InstanceName = self.repository.get(InstanceName.id_for(tenant, name))
        except AggregateNotFoundError:
            return InstanceName.register(tenant, name, instance_id, actor)
        assert isinstance(index, InstanceName)
        if index.instance_id not in (None, instance_id):
            raise NameTaken(f"the instance name {name!r} is already taken")
        index.assign(instance_id, actor)
        return index

    def _release_name(self, tenant: str, name: str, actor: Actor) -> InstanceName:
        index: InstanceName = self.repository.get(InstanceName.id_for(tenant, name))
        index.assign(None, actor)
        return index

    def owned(
        self,
        aggregate_type: type[A],
        tenant: str,
        aggregate_id: UUID,
        version: int | None,
        last_seen: bool = False,
        erased: bool = False,
    ) -> A:
        """The aggregate as it was at `version` (now, if None), deleted or not; another tenant's
        is not found, and so is an erased one (unless `erased`: its last state, to finish
        erasing it)."""
        aggregate: Aggregate | None
        try:
            if last_seen:
                aggregate = self.repository.last_seen(aggregate_id)
            else:
                aggregate = self.repository.get(aggregate_id, version=version)
        except (AggregateNotFoundError, Erased):
            aggregate = None
        if (
            not isinstance(aggregate, aggregate_type)
            or getattr(aggregate, "tenant", None) != tenant
            or (getattr(aggregate, "erased", False) and not erased)
        ):
            kind = aggregate_type.__name__.lower()
            raise NotFound(
                f"no {kind} {aggregate_id}" + (f" at version {version}" if version else "")
            )
        return aggregate

    def _current(
        self,
        aggregate_type: type[A],
        tenant: str,
        aggregate_id: UUID,
        expected_version: int | None = None,
        last_seen: bool | None = None,
    ) -> A:
        """The aggregate now, not deleted, at the expected version. Inside a command's first try
        it is this process's last copy (see `_retrying`)."""
        command = self._command
        if getattr(command, "taking_turns", False) and getattr(command, "turn", None) is None:
            self._command.turn = self._turns.take(aggregate_id)
        trusted = getattr(self._command, "trust_cache", False) if last_seen is None else last_seen
        aggregate = self.owned(aggregate_type, tenant, aggregate_id, None, trusted)
        if aggregate.archived:  # type: ignore[attr-defined]
            raise NotFound(f"{aggregate_type.__name__.lower()} {aggregate_id} was deleted")
        if expected_version is not None and aggregate.version != expected_version:
            if trusted:  # our copy may be behind the caller: ask the store before refusing
                return self._current(
                    aggregate_type, tenant, aggregate_id, expected_version, last_seen=False
                )
            raise VersionConflict(aggregate.version)
        return aggregate

    def _state(
        self,
        aggregate_type: type[A],
        tenant: str,
        aggregate_id: UUID,
        version: int | None,
        at: datetime | None,
    ) -> A:
        """Current state (not archived), or the state back then for time travel."""
        if version is None and at is None:
            return self._current(aggregate_type, tenant, aggregate_id)
        current = self.owned(aggregate_type, tenant, aggregate_id, None)
        if version is not None and not 1 <= version <= current.version:
            raise InvalidInput(f"version must be between 1 and {current.version}", "version")
        if at is not None:
            version = self._version_at(aggregate_id, current.version, as_utc(at, "at"))
        return self.owned(aggregate_type, tenant, aggregate_id, version)

    def _version_at(self, aggregate_id: UUID, last: int, at: datetime) -> int:
        """The last version recorded at or before `at`, by binary search over the stream."""
        if self._recorded_at(aggregate_id, 1) > at:
            raise NotFound(f"{aggregate_id} did not exist at {at.isoformat()}")
        low, high = 1, last
        while low < high:
            middle = (low + high + 1) // 2
            if self._recorded_at(aggregate_id, middle) <= at:
                low = middle
            else:
                high = middle - 1
        return low

    def _recorded_at(self, aggregate_id: UUID, version: int) -> datetime:
        """When the aggregate's event at `version` was recorded."""
        (stored,) = self.events.get(aggregate_id, gt=version - 1, lte=version)
        return cast(DomainEvent, stored).timestamp
