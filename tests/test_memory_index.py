"""The memory index equals the live memories, whatever happens: any interleaving of writes
(messages withdrawn from recall included), a crash between the vector write and the SQL commit,
a rebuild beside the serving index."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from alma.api.services import Services, build_memory_index, rebuild_memory_index
from alma.domain import Actor, NewMessage
from alma.projections import Follower, MemoryIndex, VectorIndex
from alma.projections.memory_docs import moment
from alma.projections.memory_plan import chunks
from alma.projections.vectors import OCCURRED

WORDS = ["gato", "perro", "Lisboa", "mole", "abuela", "río", "canción", "viaje", "jardín"]
texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=5).map(" ".join)
speakers = st.sampled_from([None, "Caroline", "José Núñez", "Doña Rosa"])
moments = st.datetimes(datetime(2019, 1, 1), datetime(2026, 1, 1), timezones=st.just(UTC))
# (text, who said it, when it happened): None, as the API's defaults
said = st.tuples(texts, speakers, st.one_of(st.none(), moments))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 1), said),
        st.tuples(st.just("revise"), st.integers(0, 20), texts),
        st.tuples(st.just("redate"), st.integers(0, 20), st.tuples(speakers, st.none() | moments)),
        st.tuples(st.just("forget"), st.integers(0, 20), st.just("")),
        st.tuples(st.just("withdraw"), st.integers(0, 20), st.just("")),
        st.tuples(st.just("rewrite"), st.integers(0, 1), st.lists(texts, max_size=3)),
        st.tuples(st.just("message"), st.integers(0, 1), said),
        st.tuples(st.just("delete"), st.integers(0, 1), st.just("")),
    ),
    min_size=1,
    max_size=20,
)
# When an imported message said without a time was said, here (the API's default is now).
SAID_AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def _said(value: Any) -> tuple[str, str | None, datetime | None]:
    """An operation's text, speaker and time: a plain text has neither of the last two."""
    return (value, None, None) if isinstance(value, str) else value


@dataclass
class Model:
    """What the index must hold: every live source of every live instance, with who said it
    and when it happened (a message withdrawn from recall is not live, though it was said:
    `messages` holds every one)."""

    instances: list[UUID]
    deleted: set[UUID] = field(default_factory=set)
    memories: dict[UUID, tuple[UUID, str]] = field(default_factory=dict)
    messages: dict[UUID, tuple[UUID, str]] = field(default_factory=dict)
    withdrawn: set[UUID] = field(default_factory=set)  # messages out of recall, still said
    memory_text: dict[UUID, str] = field(default_factory=dict)
    said: dict[UUID, tuple[str | None, datetime]] = field(default_factory=dict)  # by source

    def expected(self, instance: UUID) -> set[tuple[str, str, str | None, datetime | None]]:
        if instance in self.deleted:
            return set()
        return (
            {("memory", t, *self.said[m]) for m, (i, t) in self.memories.items() if i == instance}
            | {
                ("message", t, *self.said[m])
                for m, (i, t) in self.messages.items()
                if i == instance and m not in self.withdrawn
            }
            | {("memory_text", c, None, None) for c in chunks(self.memory_text.get(instance, ""))}
        )


def apply(services: Services, model: Model, ops: list[tuple[str, int, Any]]) -> None:
    app, actor = services.app, Actor("acme", "test", "ops")
    for op, n, value in ops:
        live = [i for i in model.instances if i not in model.deleted]
        mine = [m for m, (i, _) in model.memories.items() if i not in model.deleted]
        if op == "add" and live:
            instance = live[n % len(live)]
            text, speaker, when = _said(value)
            memory = app.add_memory(
                "acme", instance, text, actor, occurred_at=when, speaker=speaker
            )
            model.memories[memory.id] = (instance, text)
            model.said[memory.id] = (speaker, memory.occurred_at)  # when: default, now
        elif op == "revise" and mine:
            memory_id = mine[n % len(mine)]
            instance = model.memories[memory_id][0]
            app.revise_memory("acme", instance, memory_id, actor, text=value)
            model.memories[memory_id] = (instance, value)
        elif op == "redate" and mine:
            memory_id = mine[n % len(mine)]
            speaker, when = value
            patch = {"speaker": speaker, "occurred_at": when}
            memory = app.patch_memory("acme", model.memories[memory_id][0], memory_id, actor, patch)
            model.said[memory_id] = (speaker, memory.occurred_at)  # when None: when added
        elif op == "forget" and mine:
            memory_id = mine[n % len(mine)]
            app.forget_memory("acme", model.memories.pop(memory_id)[0], memory_id, actor)
        elif op == "withdraw" and mine:
            # Forgets a memory and takes one of its instance's messages out of recall.
            memory_id = mine[n % len(mine)]
            instance = model.memories.pop(memory_id)[0]
            said = [m for m, (i, _) in model.messages.items() if i == instance]
            withdrawn = [said[n % len(said)]] if said else []
            app.forget_memory("acme", instance, memory_id, actor, withdraw=withdrawn)
            model.withdrawn.update(withdrawn)
        elif op == "rewrite" and live:
            instance, text = live[n % len(live)], "\n\n".join(value)
            app.edit_instance("acme", instance, actor, memory=text)
            model.memory_text[instance] = text
        elif op == "message" and live:
            instance = live[n % len(live)]
            text, name, when = _said(value)
            message = NewMessage("user", text, when or SAID_AT, name=name)
            (message_id,) = app.import_messages("acme", instance, [message], actor)
            model.messages[message_id] = (instance, text)
            model.said[message_id] = (name, when or SAID_AT)
        elif op == "delete" and len(live) > 1:
            instance = live[n % len(live)]
            app.archive_instance("acme", instance, actor)
            model.deleted.add(instance)


def indexed(index: MemoryIndex, instance: UUID) -> set[tuple[str, str, str | None, Any]]:
    """What the index holds for the instance (who said each source and when it happened; the
    memory text's pieces date from their rewrite, which no model here knows), after checking
    SQL and Chroma agree, on when each happened and on its vector too."""
    generation = index.generation
    rows = index.store.query(
        "SELECT doc_id, kind, text, speaker, occurred_at, vector FROM memory_docs "
        "WHERE generation = %s AND instance_id = %s",
        (generation, str(instance)),
    )
    held = in_chroma(index, instance)
    assert {r[0]: moment(r[4]) for r in rows} == {d: when for d, (when, _) in held.items()}
    # Chroma's copy of a vector, once in its HNSW index, is normalized again (by hnswlib): the
    # same to the last bits of a float32.
    for doc_id, *_, vector in rows:
        stored = np.frombuffer(vector, dtype=np.float32)
        assert np.allclose(stored, held[doc_id][1], rtol=0, atol=1e-6), doc_id
    return {(r[1], r[2], r[3], moment(r[4]) if r[1] != "memory_text" else None) for r in rows}


def in_chroma(index: MemoryIndex, instance: UUID) -> dict[str, tuple[datetime, Any]]:
    """When each of the instance's vectors says its source happened, and the vector."""
    name = index.vectors.name(index.generation, instance)
    if name not in {c.name for c in index.vectors.client.list_collections()}:
        return {}
    found = index.vectors.client.get_collection(name, embedding_function=None).get(
        include=["metadatas", "embeddings"]
    )
    return {
        doc_id: (
            datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=meta[OCCURRED]),
            vector,
        )
        for doc_id, meta, vector in zip(
            found["ids"], found["metadatas"], found["embeddings"], strict=True
        )
    }


def assert_index_matches(index: MemoryIndex, model: Model) -> None:
    for instance in model.instances:
        assert indexed(index, instance) == model.expected(instance), instance
    assert_bm25_statistics_are_exact(index)


def assert_bm25_statistics_are_exact(index: MemoryIndex) -> None:
    """The counts BM25 reads, kept up to date batch by batch, equal a count from scratch."""
    generation = index.generation
    kept = index.store.query(
        "SELECT instance_id, documents, length FROM memory_stats "
        "WHERE generation = %s AND documents > 0",
        (generation,),
    )
    counted = index.store.query(
        "SELECT instance_id, COUNT(*), SUM(length) FROM memory_docs WHERE generation = %s "
        "GROUP BY instance_id",
        (generation,),
    )
    assert {tuple(map(str, r)) for r in kept} == {tuple(map(str, r)) for r in counted}
    kept = index.store.query(
        "SELECT instance_id, term, documents FROM memory_terms "
        "WHERE generation = %s AND documents > 0",
        (generation,),
    )
    counted = index.store.query(
        "SELECT instance_id, term, COUNT(*) FROM memory_words WHERE generation = %s "
        "GROUP BY instance_id, term",
        (generation,),
    )
    assert {tuple(map(str, r)) for r in kept} == {tuple(map(str, r)) for r in counted}


@pytest.fixture
def world(services: Services) -> Iterator[Model]:
    actor = Actor("acme", "test", "setup")
    character = services.app.create_character("acme", {"name": "Rosa", "description": ""}, actor)
    instances = [
        services.app.create_instance("acme", character.id, f"Rosa {n}", "", actor).id
        for n in range(2)
    ]
    yield Model(instances)


settings_for_index = hypothesis_settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@settings_for_index
@given(ops=operations, batch=st.integers(1, 7))
def test_the_index_equals_the_live_memories_after_any_interleaving(
    services: Services, world: Model, ops: list[tuple[str, int, Any]], batch: int
) -> None:
    apply(services, world, ops)
    services.memory.batch_size = batch
    services.memory.catch_up()
    assert services.memory.lag() == 0
    assert_index_matches(services.memory_index, world)


class CrashingVectors(VectorIndex):
    """Dies right after its n-th successful write to Chroma: before the SQL commit."""

    def __init__(self, inner: VectorIndex, writes_before_crash: int) -> None:
        super().__init__(inner.client)
        self.left = writes_before_crash

    def upsert(self, *args: Any, **kwargs: Any) -> None:
        super().upsert(*args, **kwargs)
        self.left -= 1
        if self.left <= 0:
            raise RuntimeError("simulated crash between Chroma and SQL")


@settings_for_index
@given(ops=operations, batch=st.integers(1, 5))
def test_a_crash_between_the_vector_write_and_the_commit_loses_and_duplicates_nothing(
    services: Services, world: Model, ops: list[tuple[str, int, Any]], batch: int
) -> None:
    # Whatever the operations, a memory last (none can forget it): a batch that writes vectors,
    # so the crash comes.
    apply(services, world, [*ops, ("add", 0, "gato")])
    dying = build_memory_index(services.settings)
    dying.vectors = CrashingVectors(dying.vectors, writes_before_crash=1)
    crashed = False
    try:
        follower = Follower(
            services.app, dying, services.locks, services.settings.partitions, batch_size=batch
        )
        while follower.run_once():
            pass
    except RuntimeError:
        crashed = True
    finally:
        dying.close()
    assert crashed
    services.memory.catch_up()
    assert services.memory.lag() == 0
    assert_index_matches(services.memory_index, world)


def test_a_stopping_worker_writes_nothing_of_its_batch_and_the_next_start_indexes_it(
    services: Services, world: Model
) -> None:
    """A shutdown during a big import must not wait for all of it to be embedded: a stopping
    worker leaves its batch at the embedder's next step (tests/test_embeddings.py), writes none
    of it, and the next start indexes everything."""
    apply(services, world, [("add", n, f"Recuerdo {n} de la sierra") for n in range(640)])
    follower, index = services.memory, services.memory_index
    lag = follower.lag()
    follower.stop()  # asked to stop as it reads the batch
    assert follower.run_once() == 0
    assert follower.lag() == lag
    assert not any(index.vectors.ids(index.generation, i) for i in world.instances)

    started_again = build_memory_index(services.settings)
    try:
        follower = Follower(
            services.app, started_again, services.locks, services.settings.partitions
        )
        follower.catch_up()
        assert follower.lag() == 0
        assert_index_matches(started_again, world)
    finally:
        started_again.close()


def test_a_rebuild_fills_a_new_generation_and_gives_the_same_index(
    services: Services, world: Model
) -> None:
    apply(
        services,
        world,
        [
            ("add", 0, "gato negro"),
            ("add", 1, ("perro", "Caroline", datetime(2023, 5, 8, 13, 56, tzinfo=UTC))),
            ("rewrite", 0, ["Vive en Lisboa"]),
            ("message", 1, ("viaje al río", "José Núñez", datetime(2024, 3, 1, tzinfo=UTC))),
            ("forget", 0, ""),
            ("add", 0, "mole de la abuela"),
            ("redate", 1, ("Melanie", None)),
        ],
    )
    index = services.memory_index
    services.memory.catch_up()
    before = {i: indexed(index, i) for i in world.instances}
    old = index.generation

    new = rebuild_memory_index(services)

    assert (index.generation, new) == (old + 1, old + 1)
    assert {i: indexed(index, i) for i in world.instances} == before
    assert not [
        c for c in index.vectors.client.list_collections() if c.name.startswith(f"alma-g{old}-")
    ]
    apply(services, world, [("add", 1, "canción del jardín")])
    services.memory.catch_up()
    assert_index_matches(index, world)


def test_an_index_from_before_the_bm25_statistics_gets_them_counted_when_opened(
    services: Services, world: Model
) -> None:
    apply(services, world, [("add", 0, "gato negro y perro"), ("message", 1, "el perro ladra")])
    services.memory.catch_up()
    hits = [h.doc.text for h in services.memory_index.search(world.instances[0], "perro")]
    with services.memory_index.store.transaction() as cursor:
        cursor.execute("DELETE FROM memory_stats")
        cursor.execute("DELETE FROM memory_terms")

    reopened = build_memory_index(services.settings)
    try:
        assert_bm25_statistics_are_exact(reopened)
        assert [h.doc.text for h in reopened.search(world.instances[0], "perro")] == hits
    finally:
        reopened.close()


def test_an_index_from_an_earlier_version_is_brought_up_to_date_when_opened(
    services: Services, world: Model
) -> None:
    apply(services, world, [("add", 0, "gato negro y perro"), ("message", 0, "el perro ladra")])
    services.memory.catch_up()
    hits = [
        (h.doc.text, h.score) for h in services.memory_index.search(world.instances[0], "perro")
    ]
    with services.memory_index.store.transaction() as cursor:  # the layout before this version
        cursor.execute(
            "CREATE TABLE memory_postings (generation INTEGER NOT NULL, instance_id TEXT NOT NULL, "
            "term TEXT NOT NULL, doc_id TEXT NOT NULL, tf INTEGER NOT NULL, "
            "PRIMARY KEY (generation, instance_id, term, doc_id))"
        )
        cursor.execute(
            "INSERT INTO memory_postings SELECT generation, instance_id, term, doc_id, tf "
            "FROM memory_words"
        )
        cursor.execute("DROP TABLE memory_words")
        cursor.execute(  # the audit, kept in the index (without its source at first)
            "CREATE TABLE memory_audit (generation INTEGER NOT NULL, instance_id TEXT NOT NULL, "
            "position BIGINT NOT NULL, version INTEGER NOT NULL, timestamp TEXT NOT NULL, "
            "actor TEXT NOT NULL, kind TEXT NOT NULL, memory_id TEXT, before TEXT NOT NULL, "
            "after TEXT NOT NULL, PRIMARY KEY (generation, instance_id, position))"
        )

    reopened = build_memory_index(services.settings)
    try:
        assert not reopened.store.has_table("memory_postings")
        assert not reopened.store.has_table("memory_audit")  # a read model of its own now
        services.memory_audit.catch_up()
        audit = services.audit_view.audit(world.instances[0], 0, 10)
        assert [e.kind for e in audit] == ["memory_text", "memory_added"]
        assert [e.source for e in audit] == [None, None]
        assert_bm25_statistics_are_exact(reopened)
        assert [(h.doc.text, h.score) for h in reopened.search(world.instances[0], "perro")] == hits
    finally:
        reopened.close()


def test_an_index_from_before_the_vectors_were_kept_in_sql_gets_them_when_opened(
    services: Services, world: Model
) -> None:
    """A search gives the turns it brings in beside its first hits, and BM25's hits that are not
    among the nearest, their dense score from the vectors kept in SQL: an index written before
    they were kept there gets them from Chroma when opened, and searches as before."""
    rng = random.Random(7)
    turns = [
        (" ".join(rng.sample(WORDS, 3)), ("Caroline", "Melanie")[n % 2], SAID_AT + n * MINUTE)
        for n in range(120)
    ]
    apply(services, world, [("add", 0, said) for said in turns])
    services.memory.catch_up()
    asked = ["gato y perro en Lisboa", "la canción de la abuela", "Caroline: viaje al río"]

    def searched(index: MemoryIndex) -> list[list[tuple[str, float]]]:
        return [
            [(h.doc.text, h.score) for h in index.search(world.instances[0], q, now=SAID_AT)]
            for q in asked
        ]

    before = searched(services.memory_index)
    with services.memory_index.store.transaction() as cursor:
        cursor.execute("ALTER TABLE memory_docs DROP COLUMN vector")

    reopened = build_memory_index(services.settings)
    try:
        assert_index_matches(reopened, world)  # each source's vector in SQL is Chroma's
        assert searched(reopened) == before
    finally:
        reopened.close()


def test_an_erasure_is_reported_done_only_once_the_store_s_log_is_wiped(
    services: Services, world: Model
) -> None:
    """Whoever waits for the index to reach an erasure (tests, `consistent=true`) must find
    none of the erased text in the store's files, its write-ahead log included."""
    apply(services, world, [("add", 0, "gato secreto"), ("message", 0, "mi perro secreto")])
    services.memory.catch_up()
    services.app.erase_instance("acme", world.instances[0], Actor("acme", "t", "r"))
    erased_at = services.app.recorder.max_notification_id() or 0
    index = build_memory_index(services.settings)
    follower = Follower(services.app, index, services.locks, services.settings.partitions)
    positions_at_wipe: list[int] = []
    wipe = index.store.wipe

    def watched_wipe() -> None:
        positions_at_wipe.append(follower.position())
        wipe()

    index.store.wipe = watched_wipe  # type: ignore[method-assign]
    try:
        follower.catch_up()
        assert positions_at_wipe and all(p < erased_at for p in positions_at_wipe)
        assert follower.position() == erased_at
    finally:
        index.close()


def test_a_forgotten_memory_stays_out_of_search_and_of_a_rebuild(
    services: Services, world: Model
) -> None:
    app, actor, instance = services.app, Actor("acme", "t", "r"), world.instances[0]
    secret = app.add_memory("acme", instance, "El código secreto es 4711", actor)
    app.add_memory("acme", instance, "El perro se llama Canelo", actor)
    app.forget_memory("acme", instance, secret.id, actor)
    services.memory.catch_up()
    rebuild_memory_index(services)
    for query in ["código secreto", "4711", "perro"]:
        hits = services.memory_index.search(instance, query, k=100)
        assert all("4711" not in hit.doc.text for hit in hits)
    held = {(kind, text) for kind, text, *_ in indexed(services.memory_index, instance)}
    assert held == {("memory", "El perro se llama Canelo")}
