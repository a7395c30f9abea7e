"""The memory process: follows the log and turns conversations into memory snippets.

After each completed turn (a reply recorded for a user's message), and after every
`IMPORT_WINDOW` imported messages with no reply, it shows the model the new messages and the
instance's most similar memories and asks for operations (add, revise, forget); every
`summary_every` messages it also asks for a summary of them. The local model is asked less (the
new facts in what the user said, its answer held to a JSON schema), and only when no chat wants
it: a chat arriving takes it over, and the window waits (`Later`). The operations are carried
out as ordinary memory commands whose actor is the memory process (`key_id` "memory-process",
the turn's request id) and whose `source` names the messages, so they show in the audit and a
person can undo them with an ordinary edit. It runs in follower threads, never inside a
request. It follows the log with the projections' `Follower`, partition by partition, but is
no read model: it asks the model and issues commands, so it lives beside the chat turn.

Many windows at once, none waiting for another instance's: a batch only makes its windows
durable — the messages held and the windows due (`formation_due`) recorded in the transaction
that moves the partitions' positions — and formers (chat/formers.py) take the windows due,
continuously, one former per instance at a time taking that instance's windows in order, with
at most `concurrency` model calls in flight (`Pace`: a 429 slows them all down); a window whose
model call fails is counted and tried again after a pause. A window still due counts as not
processed (`due`): the follower's position, lag and status include the oldest.

Exactly once: the model's validated answer for a window is stored before any command runs, and
only if the window is not formed yet; the first answer stored is the one every attempt carries
out (another worker's, or this one's before a crash), and the ids of added memories derive from
the window, so a window processed again issues the same commands, which change nothing. A
window's end is recorded (`formation_instances`), with its messages marked and its due row
gone, in one transaction fenced by its partition: messages and windows at or before it are
never formed again, and a worker that lost the partition writes nothing. A partition's new owner
takes the windows its previous owner left due.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.persistence import IntegrityError

from alma import metrics
from alma.chat.duplicates import repeats
from alma.chat.extraction import (
    SUMMARY_MAX_TOKENS,
    Extraction,
    Line,
    Malformed,
    Operation,
    fact_list_extraction,
    operations_extraction,
    read_summary,
    summary_prompt,
)
from alma.chat.formers import Formers
from alma.chat.pace import Pace
from alma.domain import Actor, Alma, DomainError, Instance, NotFound
from alma.domain.instance import speaker_of
from alma.domain.rules import as_utc
from alma.llm.client import Completion, Messages, ModelClient, ModelError, Sampling
from alma.projections import Later, MemoryIndex
from alma.projections.partitions import Fenced, Progress
from alma.stores.sql import SqlStore

log = logging.getLogger(__name__)

NAME = "memory-formation"
ACTOR_KEY = "memory-process"
IMPORT_WINDOW = 10  # imported messages formed together when no reply closes a turn
OFFERED = 10  # existing memories shown to the model
INDEX_WAIT_S = 10.0
_IDS = uuid5(NAMESPACE_URL, "https://alma.dev/memory-formation")
# The local model's refusals of background work, by the reason counted: chats come first.
_CHATS_FIRST = {"gave_way_to_chat": "gave_way", "chat_model_busy": "busy"}
WINDOW_ATTEMPTS = 6  # a window's model call failing this many times fails its former (tried later)
RETRY_PAUSE_S = 1.0  # the first pause after a failed window; doubled each time, at most 30 s
LOOK_AGAIN_S = 1.0  # how often the windows due are looked for (others' left, failed ones)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS formation_messages (
        instance_id TEXT NOT NULL, position BIGINT NOT NULL, tenant TEXT NOT NULL,
        message_id TEXT NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL,
        request_id TEXT NOT NULL, formed INTEGER NOT NULL, occurred_at TEXT, name TEXT,
        PRIMARY KEY (instance_id, position))""",
    """CREATE TABLE IF NOT EXISTS formation_plans (
        plan_id TEXT PRIMARY KEY, instance_id TEXT NOT NULL, body TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS formation_summaries (
        instance_id TEXT PRIMARY KEY, memory_id TEXT NOT NULL)""",
    # The last window formed of each instance: the log position of its closing message.
    """CREATE TABLE IF NOT EXISTS formation_instances (
        instance_id TEXT PRIMARY KEY, position BIGINT NOT NULL)""",
    # Windows read and not formed yet: the position of each one's closing message.
    """CREATE TABLE IF NOT EXISTS formation_due (
        instance_id TEXT NOT NULL, position BIGINT NOT NULL, tenant TEXT NOT NULL,
        request_id TEXT NOT NULL, PRIMARY KEY (instance_id, position))""",
]
_LEGACY = "formation_position"  # the one position of a store from before partitions
# Messages held by an earlier version did not keep when they were said and by whom: theirs are
# NULL, and a memory formed from them happened when it is recorded, as before.
_WHEN_AND_WHO = [
    "ALTER TABLE formation_messages ADD COLUMN occurred_at TEXT",
    "ALTER TABLE formation_messages ADD COLUMN name TEXT",
]


@dataclass(frozen=True)
class _Message:
    instance_id: UUID
    position: int
    tenant: str
    message_id: str
    role: str
    content: str
    request_id: str
    occurred_at: datetime | None  # when it was said; None if held by an earlier version
    name: str | None  # who said it, when known
    formed: bool = False


@dataclass(frozen=True)
class _Due:
    """A window to form: an instance's held messages up to `position`, its closing one."""

    instance_id: UUID
    position: int
    tenant: str
    request_id: str  # the closing turn's: the memory commands' actor


class MemoryFormation:
    name = NAME

    def __init__(
        self,
        app: Alma,
        store: SqlStore,
        index: MemoryIndex,
        index_wait: Callable[[int, float], bool],
        model: Callable[[], ModelClient],
        summary_every: int = 20,
        local: bool = False,
        concurrency: int = 1,
    ) -> None:
        """`local`: the model is the local one, asked only for the new facts in what the user
        said (`fact_list_extraction`), with no rolling summaries: the 20 messages one covers do
        not fit its context. Its requests give way to chats (llm/turn.py), one at a time.
        `concurrency`: model calls in flight at most."""
        self.app = app
        self.store = store
        self.index = index
        self.index_wait = index_wait
        self.model = model
        self.summary_every = summary_every
        self.local = local
        self.dropped = 0  # answers that were not what was asked for; memories already had
        self.refused = 0  # operations refused: unknown memories, texts the rules refuse
        self.pace = Pace(1 if local else concurrency)
        # More formers than model calls: a window waits for the index before it asks the model,
        # and those waits must not hold the places of the calls (`pace` bounds those).
        self.formers = Formers(4 * self.pace.limit, self._form_due)
        self._closing = threading.Event()
        # When the windows due were last looked for, and with the fences of which partitions.
        self._looked: tuple[float, dict[int, int]] = (0.0, {})
        self._counting = threading.Lock()
        older = store.has_table("formation_messages") and not store.has_column(
            "formation_messages", "name"
        )
        with store.transaction() as cursor:
            for statement in SCHEMA:
                cursor.execute(statement)
            for statement in _WHEN_AND_WHO if older else []:
                cursor.execute(statement)

    def close(self) -> None:
        self._closing.set()
        self.formers.close()
        self.store.close()

    def key(self) -> str:
        return NAME

    def start(self) -> int:
        """Where a store from before partitions had got to; on the first run, the end of the
        log: switching formation on for a store with years of conversation must not send all
        of it to a paid model unasked."""
        if self.store.has_table(_LEGACY):
            rows = self.store.query(f"SELECT position FROM {_LEGACY} WHERE id = 1")
            if rows:
                return int(rows[0][0])
        return self.app.recorder.max_notification_id() or 0

    def process(self, batch: Sequence[tuple[Any, int]], progress: Progress) -> None:
        """Holds the batch's messages and records its windows due, in the transaction that
        moves the partitions on; the formers take the windows (`_form_due`)."""
        first = batch[0][1]
        formed = self._formed({event.originator_id for event, _ in batch})
        held: list[_Message] = []
        archived: set[UUID] = set()
        withdrawn: set[tuple[UUID, str]] = set()
        unformed: dict[UUID, int] = {}
        windows: dict[UUID, list[_Due]] = {}
        for event, position in batch:
            kind = type(event)
            if kind in (Instance.Archived, Instance.Erased):
                archived.add(event.originator_id)
                held = [m for m in held if m.instance_id != event.originator_id]
                windows.pop(event.originator_id, None)
            elif kind is Instance.MessagesWithdrawnFromRecall:
                # Out of recall: no later memory or summary is formed from them.
                withdrawn |= {(event.originator_id, m) for m in event.message_ids}
                held = [m for m in held if (m.instance_id, m.message_id) not in withdrawn]
            elif kind in (Instance.MessageRecorded, Instance.ReplyRecorded) and not getattr(
                event, "forked_from", None
            ):  # a fork's copy of a turn: what it taught is in the copied memories already
                if position <= formed.get(event.originator_id, 0):
                    continue  # formed before a crash, or by the partition's previous owner
                message = _message(event, position)
                held.append(message)
                instance_id = message.instance_id
                if instance_id not in unformed:
                    unformed[instance_id] = self._unformed(instance_id, first)
                unformed[instance_id] += 1
                if kind is Instance.ReplyRecorded or unformed[instance_id] >= IMPORT_WINDOW:
                    due = _Due(instance_id, position, message.tenant, message.request_id)
                    windows.setdefault(instance_id, []).append(due)
                    unformed[instance_id] = 0
        with self.store.transaction() as cursor:
            progress.check(cursor)  # the partitions' rows first, as the formers lock them
            self._hold(cursor, held, archived, withdrawn)
            cursor.executemany(
                "INSERT INTO formation_due (instance_id, position, tenant, request_id) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (instance_id, position) DO NOTHING",
                [
                    (str(w.instance_id), w.position, w.tenant, w.request_id)
                    for ws in windows.values()
                    for w in ws
                ],
            )
            progress.advance(cursor)
        if archived:
            self.store.wipe()  # an erased instance's messages must not stay in the log
        self.formers.take(windows, progress)

    def due(self) -> dict[UUID, int]:
        """Each instance with windows due, and the log position of the oldest one's end."""
        rows = self.store.query(
            "SELECT instance_id, MIN(position) FROM formation_due GROUP BY instance_id"
        )
        return {UUID(str(i)): int(p) for i, p in rows}

    def tend(self, progress: Progress) -> None:
        """Takes up the windows due in the partitions owned: now and then, and at once when
        they change (a partition taken over, with what its previous owner left due)."""
        looked, fences = self._looked
        if fences == progress.fences and time.monotonic() < looked + LOOK_AGAIN_S:
            return
        self._looked = (time.monotonic(), dict(progress.fences))
        self.formers.take(self.due(), progress)

    def drain(self) -> None:
        self.formers.drain()

    # Steps

    def _hold(
        self,
        cursor: Any,
        messages: list[_Message],
        archived: set[UUID],
        withdrawn: set[tuple[UUID, str]],
    ) -> None:
        """Keeps messages until they are formed and summarised; lets go of those withdrawn
        from recall, and forgets deleted instances (their windows due too)."""
        if messages:
            cursor.executemany(
                "INSERT INTO formation_messages (instance_id, position, tenant, message_id, "
                "role, content, request_id, formed, occurred_at, name) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, 0, %s, %s) "
                "ON CONFLICT (instance_id, position) DO NOTHING",
                [
                    (
                        str(m.instance_id),
                        m.position,
                        m.tenant,
                        m.message_id,
                        m.role,
                        m.content,
                        m.request_id,
                        None if m.occurred_at is None else m.occurred_at.isoformat(),
                        m.name,
                    )
                    for m in messages
                ],
            )
        if withdrawn:
            cursor.executemany(
                "DELETE FROM formation_messages WHERE instance_id = %s AND message_id = %s",
                [(str(instance_id), message_id) for instance_id, message_id in withdrawn],
            )
        for instance_id in archived:
            for table in _PER_INSTANCE:
                cursor.execute(f"DELETE FROM {table} WHERE instance_id = %s", (str(instance_id),))

    def _form_due(self, instance_id: UUID, progress: Progress) -> None:
        """One instance's windows due, oldest first, until none is left."""
        while (window := self._next_due(instance_id)) is not None:
            self._attempts(window, progress)

    def _next_due(self, instance_id: UUID) -> _Due | None:
        rows = self.store.query(
            "SELECT position, tenant, request_id FROM formation_due WHERE instance_id = %s "
            "ORDER BY position LIMIT 1",
            (str(instance_id),),
        )
        return None if not rows else _Due(instance_id, int(rows[0][0]), rows[0][1], rows[0][2])

    def _attempts(self, window: _Due, progress: Progress) -> None:
        """Forms a window; each failed model call is counted and tried again after a pause that
        doubles (or the model's Retry-After, which slows every call)."""
        for attempt in range(1, WINDOW_ATTEMPTS + 1):
            if self._closing.is_set():
                raise Later("closing")  # the window stays due, for the next start
            if not progress.held():
                raise Fenced(f"{NAME}: this worker lost its partitions")
            try:
                self._form(window, progress)
                return
            except ModelError as error:
                limited = error.upstream_status == 429
                reason = "rate_limited" if limited else "unavailable"
                metrics.MEMORY_FORMATION_FAILED.labels(reason).inc()
                if attempt == WINDOW_ATTEMPTS:
                    raise
                pause = min(30.0, RETRY_PAUSE_S * 2 ** (attempt - 1))
                if limited:
                    self.pace.limited(error.upstream_retry_after_s)
                    pause = max(pause, error.upstream_retry_after_s or 0.0)
                log.warning(
                    "memory formation: a window failed (%s), trying again in %.1f s",
                    error.message,
                    pause,
                )
                self._closing.wait(pause)

    def _form(self, window: _Due, progress: Progress) -> None:
        instance_id, tenant, position = window.instance_id, window.tenant, window.position
        if self._formed({instance_id}).get(instance_id, 0) >= position:
            self._done(window, progress)  # formed by the partition's previous owner
            return
        held = [m for m in self._held(instance_id) if m.position <= position]
        actor = Actor(tenant, ACTOR_KEY, window.request_id)
        summary_id = None
        try:
            name = self.app.instance(tenant, instance_id).name
            fresh = [m for m in held if not m.formed]
            if fresh:
                self._facts(name, fresh, actor, position)
            if len(held) >= self.summary_every and not self.local:
                summary_id = self._summary(name, held, actor, position)
        except NotFound:
            pass  # deleted meanwhile: its Archived event clears what is held
        with self.store.transaction() as cursor:
            if not self._done_in(cursor, window, progress):
                return  # the instance was deleted meanwhile: nothing of it is kept
            scope = (str(instance_id), position)
            if summary_id is not None or self.local:  # no summary will want them
                cursor.execute(
                    "DELETE FROM formation_messages WHERE instance_id = %s AND position <= %s",
                    scope,
                )
            if summary_id is not None:
                cursor.execute(
                    "INSERT INTO formation_summaries (instance_id, memory_id) VALUES (%s, %s) "
                    "ON CONFLICT (instance_id) DO UPDATE SET memory_id = excluded.memory_id",
                    (str(instance_id), str(summary_id)),
                )
            else:
                cursor.execute(
                    "UPDATE formation_messages SET formed = 1 "
                    "WHERE instance_id = %s AND position <= %s",
                    scope,
                )
            cursor.execute("DELETE FROM formation_plans WHERE instance_id = %s", scope[:1])
            cursor.execute(
                "INSERT INTO formation_instances (instance_id, position) VALUES (%s, %s) "
                "ON CONFLICT (instance_id) DO UPDATE SET position = excluded.position",
                scope,
            )

    def _done(self, window: _Due, progress: Progress) -> None:
        with self.store.transaction() as cursor:
            self._done_in(cursor, window, progress)

    def _done_in(self, cursor: Any, window: _Due, progress: Progress) -> bool:
        """Takes the window off the windows due, under its partition's fence; False when it
        was not due any more (its instance deleted meanwhile)."""
        progress.check(cursor)
        cursor.execute(
            "DELETE FROM formation_due WHERE instance_id = %s AND position = %s RETURNING position",
            (str(window.instance_id), window.position),
        )
        return cursor.fetchone() is not None

    def _facts(self, name: str, fresh: list[_Message], actor: Actor, window: int) -> None:
        instance_id = fresh[-1].instance_id
        plan_id = f"facts/{fresh[-1].message_id}"
        stored = self._plan(plan_id)
        if stored is None:
            extraction = self._extraction(name, fresh)
            if extraction is None:
                return
            answer = self._ask(extraction.messages, extraction.max_tokens, extraction.sampling)
            if answer is None:
                return
            try:
                operations, refused = extraction.read(answer)
            except Malformed as error:
                self._drop(instance_id, error)
                return
            with self._counting:
                self.refused += refused
            stored = self._keep(plan_id, instance_id, window, [op.as_dict() for op in operations])
            if stored is None:
                return  # formed meanwhile by the partition's new owner
        operations = [Operation.of(item) for item in stored]
        source = {"messages": [m.message_id for m in fresh]}
        said = _said_at(fresh)
        if any(operation.op == "add" for operation in operations):  # checked against the index
            written = self._written(fresh)
            self.index_wait(written, INDEX_WAIT_S)
        added: list[Operation] = []  # in this window: not in the index yet
        for n, operation in enumerate(operations):
            new_id = uuid5(_IDS, f"{plan_id}/{n}")
            if operation.op == "add" and self._repeats(instance_id, operation, new_id, added):
                continue
            self._apply(operation, new_id, instance_id, actor, source, said)
            if operation.op == "add":
                added.append(operation)

    def _extraction(self, name: str, fresh: list[_Message]) -> Extraction | None:
        window = self.model().context_window
        if self.local:
            return fact_list_extraction(name, _lines(fresh), window)
        offered = self._offered(fresh[-1].instance_id, fresh)
        return operations_extraction(name, offered, _lines(fresh), window)

    def _apply(
        self,
        operation: Operation,
        new_id: UUID,
        instance_id: UUID,
        actor: Actor,
        source: dict[str, Any],
        said: datetime | None,
    ) -> None:
        """An added memory happened when its messages were said (`said`, the latest of them),
        and is the fact of the speaker the model names, if any."""
        app, tenant = self.app, actor.tenant
        try:
            if operation.op == "add":
                assert operation.text is not None
                app.add_memory(
                    tenant,
                    instance_id,
                    operation.text,
                    actor,
                    {"kind": "fact"},
                    operation.importance,
                    source,
                    memory_id=new_id,
                    occurred_at=said,
                    speaker=operation.speaker,
                )
                return
            assert operation.memory_id is not None
            memory_id = UUID(operation.memory_id)
            memory = app.memory(tenant, instance_id, memory_id)
            if operation.op == "forget":
                app.forget_memory(tenant, instance_id, memory_id, actor, source)
            elif memory.source != source:  # not revised from these messages yet
                app.revise_memory(
                    tenant,
                    instance_id,
                    memory_id,
                    actor,
                    text=operation.text,
                    importance=operation.importance,
                    source=source,
                )
        except IntegrityError:
            pass  # added before a crash, with this very id
        except DomainError as error:
            with self._counting:
                self.refused += 1
            log.info("memory formation refused a %s: %s", operation.op, error)

    def _repeats(
        self, instance_id: UUID, operation: Operation, new_id: UUID, added: list[Operation]
    ) -> bool:
        """Whether the instance has a memory that says what `operation` adds (chat/duplicates.py),
        of the same speaker when both name one: one added from this window, or one of the
        memories most like it in the index (summaries aside). Such an add is left out and
        counted. The local model, not shown the instance's memories, adds a fact again each time
        it is told."""
        text = operation.text or ""
        hits = self.index.search(instance_id, text, k=2 * OFFERED)
        existing = [
            (hit.doc.text, hit.doc.speaker)
            for hit in hits
            if hit.doc.kind == "memory"
            and hit.doc.metadata.get("kind") != "summary"
            and hit.doc.doc_id != str(new_id)  # this very add, before a crash
        ]
        if not repeats(
            text, operation.speaker, [*((o.text or "", o.speaker) for o in added), *existing]
        ):
            return False
        self._count_drop("duplicate")
        log.info("memory formation left out a memory %s already has", instance_id)
        return True

    def _summary(self, name: str, held: list[_Message], actor: Actor, window: int) -> UUID | None:
        instance_id = held[-1].instance_id
        plan_id = f"summary/{held[-1].message_id}"
        previous_id, previous = self._previous_summary(instance_id, actor.tenant)
        stored = self._plan(plan_id)
        if stored is None:
            messages = summary_prompt(name, previous, _lines(held), self.model().context_window)
            answer = self._ask(messages, SUMMARY_MAX_TOKENS)
            if answer is None:
                return None
            try:
                text = read_summary(answer)
            except Malformed as error:
                self._drop(instance_id, error)
                return None
            stored = self._keep(plan_id, instance_id, window, text)
            if stored is None:
                return None  # formed meanwhile by the partition's new owner
        text = str(stored)
        source: dict[str, Any] = {"messages": [m.message_id for m in held]}
        if previous_id is not None:
            source["previous_summary"] = str(previous_id)
        summary_id = uuid5(_IDS, plan_id)
        with suppress(IntegrityError):  # added before a crash
            self.app.add_memory(
                actor.tenant,
                instance_id,
                text,
                actor,
                {"kind": "summary"},
                None,
                source,
                memory_id=summary_id,
                occurred_at=_said_at(held),
            )
        return summary_id

    # Helpers

    def _ask(
        self, messages: Messages, max_tokens: int, sampling: Sampling | None = None
    ) -> str | None:
        """The model's answer, streamed so that the local model can be given up to a chat
        (then `Later`: the window waits); None when the model refuses the request for good (a
        4xx). Outages raise, so the follower retries the window later."""
        try:
            with self.pace.call():
                *_, done = self.model().stream(messages, max_tokens, 0.0, sampling)
            self.pace.answered()
        except ModelError as error:
            if error.code in _CHATS_FIRST:
                metrics.MEMORY_FORMATION_DEFERRED.labels(_CHATS_FIRST[error.code]).inc()
                raise Later(error.message) from None
            upstream = error.upstream_status
            if upstream is None or upstream == 429 or upstream >= 500:
                raise
            self._count_drop("model_refused")
            log.warning("memory formation: the model refused a window: %s", error.message)
            return None
        assert isinstance(done, Completion)  # a stream ends with its completion
        return done.text

    def _drop(self, instance_id: UUID, error: Malformed) -> None:
        self._count_drop(error.reason)
        log.warning("memory formation dropped the model's answer for %s: %s", instance_id, error)

    def _count_drop(self, reason: str) -> None:
        with self._counting:
            self.dropped += 1
        metrics.MEMORY_EXTRACTIONS_DROPPED.labels(reason).inc()

    def _offered(self, instance_id: UUID, fresh: list[_Message]) -> list[tuple[str, str]]:
        """The instance's live memories most similar to the new messages (summaries aside),
        once the index holds what they follow (`_written`; bounded wait)."""
        written = self._written(fresh)
        self.index_wait(written, INDEX_WAIT_S)
        query = " ".join(m.content for m in fresh)[:4000]
        hits = self.index.search(instance_id, query, k=50)
        return [
            (hit.doc.doc_id, hit.doc.text)
            for hit in hits
            if hit.doc.kind == "memory" and hit.doc.metadata.get("kind") != "summary"
        ][:OFFERED]

    def _written(self, fresh: list[_Message]) -> int:
        """What the index must hold before the window's memories are looked at: everything
        up to its last message, and what this process last wrote of the instance (its earlier
        windows' memories; `last_writes`), not the log's end, which a busy log keeps moving
        away, nor a window's that wrote nothing."""
        mine = self.app.last_writes.of(fresh[-1].instance_id) or 0
        return max(fresh[-1].position, mine)

    def _previous_summary(self, instance_id: UUID, tenant: str) -> tuple[UUID | None, str | None]:
        rows = self.store.query(
            "SELECT memory_id FROM formation_summaries WHERE instance_id = %s",
            (str(instance_id),),
        )
        if not rows:
            return None, None
        memory_id = UUID(str(rows[0][0]))
        try:
            return memory_id, self.app.memory(tenant, instance_id, memory_id).text
        except NotFound:
            return None, None  # forgotten by someone: start afresh

    def _unformed(self, instance_id: UUID, before: int) -> int:
        """The instance's messages held from before position `before` and in no window yet
        (neither formed nor due)."""
        rows = self.store.query(
            "SELECT COUNT(*) FROM formation_messages WHERE instance_id = %s AND formed = 0 "
            "AND position < %s AND position > COALESCE((SELECT MAX(position) FROM "
            "formation_due WHERE instance_id = %s), -1)",
            (str(instance_id), before, str(instance_id)),
        )
        return int(rows[0][0])

    def _formed(self, instance_ids: set[UUID]) -> dict[UUID, int]:
        """The position of the last window formed of each of these instances (if any)."""
        ids = [str(i) for i in instance_ids]
        found: dict[UUID, int] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join(["%s"] * len(chunk))
            rows = self.store.query(
                "SELECT instance_id, position FROM formation_instances "
                f"WHERE instance_id IN ({marks})",
                tuple(chunk),
            )
            found |= {UUID(str(i)): int(p) for i, p in rows}
        return found

    def _held(self, instance_id: UUID) -> list[_Message]:
        rows = self.store.query(
            "SELECT position, tenant, message_id, role, content, request_id, formed, occurred_at, "
            "name FROM formation_messages WHERE instance_id = %s ORDER BY position",
            (str(instance_id),),
        )
        return [
            _Message(
                instance_id,
                int(r[0]),
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                None if r[7] is None else as_utc(datetime.fromisoformat(str(r[7]))),
                r[8],
                bool(r[6]),
            )
            for r in rows
        ]

    def _plan(self, plan_id: str) -> Any:
        rows = self.store.query("SELECT body FROM formation_plans WHERE plan_id = %s", (plan_id,))
        return json.loads(rows[0][0]) if rows else None

    def _keep(self, plan_id: str, instance_id: UUID, window: int, body: Any) -> Any:
        """Stores the answer for the window ending at `window` unless one is stored already
        or the window is formed; returns the answer to carry out (the first stored), or None
        when the window is formed."""
        with self.store.transaction() as cursor:
            cursor.execute(
                "INSERT INTO formation_plans (plan_id, instance_id, body) "
                "SELECT %s, %s, %s WHERE NOT EXISTS (SELECT 1 FROM formation_instances "
                "WHERE instance_id = %s AND position >= %s) ON CONFLICT (plan_id) DO NOTHING",
                (
                    plan_id,
                    str(instance_id),
                    json.dumps(body, ensure_ascii=False),
                    str(instance_id),
                    window,
                ),
            )
        return self._plan(plan_id)


_PER_INSTANCE = (
    "formation_due",
    "formation_messages",
    "formation_summaries",
    "formation_plans",
    "formation_instances",
)


def _message(event: Any, position: int) -> _Message:
    replied = type(event) is Instance.ReplyRecorded
    return _Message(
        event.originator_id,
        position,
        event.actor.tenant,
        str(event.message_id),
        "assistant" if replied else event.role,
        event.content,
        event.actor.request_id,
        event.timestamp if replied else as_utc(event.sent_at),
        speaker_of(event),
    )


def _said_at(messages: list[_Message]) -> datetime | None:
    """When the latest of `messages` was said; None (when recorded) if none of them says."""
    return max((m.occurred_at for m in messages if m.occurred_at is not None), default=None)


def _lines(messages: list[_Message]) -> list[Line]:
    return [Line(m.role, m.content, m.name) for m in messages]
