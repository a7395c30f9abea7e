"""The listings read model, driven by hand: `Follower.run_once()` / `catch_up()` in this thread.

A model computed from the commands says which characters and instances each tenant has; the
projection must list exactly those, in creation order, whatever happens to the follower:
events processed twice, a crash part-way, a rebuild from nothing.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from alma.api.services import Services, build_services
from alma.domain import Actor, NameTaken
from alma.domain.rules import name_key
from alma.projections import Follower, Listings
from alma.projections.listings import fold
from alma.projections.partitions import Progress

KINDS = ("character", "instance")

# A few names that collide (by name_key) or look like LIKE wildcards, plus arbitrary text.
NAMES = st.one_of(
    st.sampled_from(
        ["Rosa", "rosa", "ROSA ", "José", "Jose\u0301", "JOSE", "50%_off", "a_b", "Ana!"]
    ),
    st.text(alphabet=st.sampled_from("abcAÉé ñ%_!'"), min_size=1, max_size=8).filter(
        lambda text: bool(text.strip())
    ),
)
DESCRIPTIONS = st.sampled_from(["", "Curandera", "100% natural", "snake_case", "one case", "Niño"])
QUERIES = ["%", "_", "a_b", "e_c", "jose", "JOSÉ", "rosa", "100%", "!", "ñ", "o", "'"]


def actor_for(tenant: str) -> Actor:
    return Actor(tenant, "test-key", "listing-test")


def view_of(services: Services) -> Listings:
    return services.listings_view


@dataclass
class Item:
    id: UUID
    tenant: str
    name: str
    description: str = ""
    parent: UUID | None = None
    archived: bool = False


@dataclass
class Model:
    """What the listings should show, computed from the commands alone."""

    items: dict[str, list[Item]] = field(default_factory=lambda: {kind: [] for kind in KINDS})

    def live(self, kind: str, tenant: str | None = None) -> list[Item]:
        return [
            item
            for item in self.items[kind]
            if not item.archived and (tenant is None or item.tenant == tenant)
        ]

    def taken(self, tenant: str, name: str, but: UUID | None = None) -> bool:
        return any(
            name_key(item.name) == name_key(name) and item.id != but
            for item in self.live("instance", tenant)
        )

    def expected(
        self, kind: str, tenant: str, parent: UUID | None = None, query: str | None = None
    ) -> list[UUID]:
        return [
            item.id
            for item in self.live(kind, tenant)
            if (parent is None or item.parent == parent)
            and (
                not query or fold(query) in fold(item.name) or fold(query) in fold(item.description)
            )
        ]


def listed(
    view: Listings,
    kind: str,
    tenant: str,
    parent: UUID | None = None,
    query: str | None = None,
    page: int = 1000,
) -> list[UUID]:
    """Every listed id, following the pages as the API does."""
    ids: list[UUID] = []
    after = 0
    while True:
        entries = view.select(kind, tenant, after, page, parent_id=parent, query=query)
        ids.extend(entry.id for entry in entries)
        if len(entries) < page:
            return ids
        after = entries[-1].position


def rows(view: Listings) -> list[tuple[Any, ...]]:
    """The whole table, to show that something changed nothing at all."""
    found = view.store.query(
        "SELECT kind, id, tenant, parent_id, position, name, description, archived "
        "FROM listings ORDER BY position, id"
    )
    return [(*row[:4], int(row[4]), *row[5:7], bool(row[7])) for row in found]


def assert_lists(view: Listings, model: Model, tenants: list[str]) -> None:
    for tenant in tenants:
        for kind in KINDS:
            assert listed(view, kind, tenant) == model.expected(kind, tenant), (kind, tenant)
        assert listed(view, "character", tenant, page=2) == model.expected("character", tenant)
        for character in model.items["character"]:
            if character.tenant == tenant:
                got = listed(view, "instance", tenant, parent=character.id)
                assert got == model.expected("instance", tenant, parent=character.id)
        for query in QUERIES:  # search follows renames and description changes
            got = listed(view, "character", tenant, query=query)
            assert got == model.expected("character", tenant, query=query), query
        for kind in KINDS:
            for item in model.live(kind, tenant):
                assert item.id in listed(view, kind, tenant, query=item.name), item


# Commands: (operation, tenant index, which target, name, description), targets taken modulo
# what exists when the command runs, so every generated sequence means something.
COMMANDS = st.lists(
    st.tuples(
        st.sampled_from(
            ["character", "character", "instance", "instance", "rename", "describe", "archive"]
        ),
        st.integers(0, 1),
        st.integers(0, 50),
        NAMES,
        DESCRIPTIONS,
    ),
    min_size=8,
    max_size=30,
)


def run_commands(
    services: Services, commands: list[tuple[str, int, int, str, str]], tenants: list[str]
) -> Model:
    app = services.app
    model = Model()
    for operation, tenant_index, target, name, description in commands:
        tenant = tenants[tenant_index]
        actor = actor_for(tenant)
        characters = model.live("character", tenant)
        if operation == "character":
            created = app.create_character(
                tenant, {"name": name, "description": description}, actor
            )
            model.items["character"].append(Item(created.id, tenant, name, description))
        elif operation == "instance" and characters:
            parent = characters[target % len(characters)]
            if model.taken(tenant, name):
                with pytest.raises(NameTaken):
                    app.create_instance(tenant, parent.id, name, "", actor)
                continue
            instance = app.create_instance(tenant, parent.id, name, "", actor)
            model.items["instance"].append(Item(instance.id, tenant, name, parent=parent.id))
        elif operation in ("rename", "archive"):
            candidates = characters + model.live("instance", tenant)
            if not candidates:
                continue
            item = candidates[target % len(candidates)]
            is_character = item in characters
            if operation == "archive":
                if is_character:
                    app.archive_character(tenant, item.id, actor)
                else:
                    app.archive_instance(tenant, item.id, actor)
                item.archived = True
            elif is_character:
                app.edit_character(tenant, item.id, {"name": name}, actor)
                item.name = name
            elif model.taken(tenant, name, but=item.id):
                with pytest.raises(NameTaken):
                    app.edit_instance(tenant, item.id, actor, name=name)
            else:
                app.edit_instance(tenant, item.id, actor, name=name)
                item.name = name
        elif operation == "describe" and characters:
            item = characters[target % len(characters)]
            app.edit_character(tenant, item.id, {"description": description}, actor)
            item.description = description
    return model


def fresh_tenants() -> list[str]:
    """Tenants no other example has used, since examples share one store."""
    run = uuid.uuid4().hex[:8]
    return [f"t{run}-a", f"t{run}-b"]


def _a_few_of_everything(services: Services) -> tuple[Model, list[str]]:
    commands = [
        ("character", 0, 0, "Doña Rosa", "Curandera"),
        ("character", 0, 0, "Juan", "Arriero"),
        ("character", 1, 0, "Rosa", "100% natural"),
        ("instance", 0, 0, "Rosa 1", ""),
        ("instance", 0, 1, "Juan 1", ""),
        ("instance", 1, 0, "Rosa 1", ""),
        ("rename", 0, 3, "Rosita", ""),
        ("rename", 0, 3, "Rosa la chica", ""),
        ("describe", 0, 1, "", "Viejo arriero"),
        ("describe", 0, 1, "", "Arriero jubilado"),
        ("rename", 0, 1, "Don Juan", ""),
        ("rename", 0, 1, "Juan", ""),
        ("archive", 0, 0, "", ""),
        ("instance", 0, 1, "Rosa 1", ""),
        ("instance", 0, 0, "Juan 2", ""),
        ("archive", 0, 3, "", ""),  # an instance ("Juan 2")
        ("instance", 1, 0, "Rosa 2", ""),
        ("archive", 1, 1, "", ""),  # an instance of the other tenant ("Rosa 1")
    ]
    tenants = fresh_tenants()
    return run_commands(services, commands, tenants), tenants


# Every example writes to a real store, so a failure is reported as found, unshrunk: shrinking
# it took minutes. Add Phase.shrink here when you want the smallest failing sequence.
FEW = hypothesis_settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)


@FEW
@given(commands=COMMANDS, split=st.integers(1, 5))
def test_lists_exactly_the_live_characters_and_instances(
    services: Services, commands: list[tuple[str, int, int, str, str]], split: int
) -> None:
    tenants = fresh_tenants()
    model = run_commands(services, commands, tenants)
    follower = services.listings
    follower.batch_size = split  # small batches: the same events, in several polls
    try:
        follower.catch_up()
    finally:
        follower.batch_size = 200
    assert follower.lag() == 0
    assert_lists(view_of(services), model, tenants)


def assert_repeats_change_nothing(services: Services, start: int, skip: int = 0) -> None:
    """Delivers the events after `start` (and `skip` more) a second time, as a re-split of the
    partitions does: every partition back there, and the log followed again in new batches.
    The view must end exactly as it was."""
    follower = services.listings
    follower.catch_up()
    before = rows(view_of(services))
    position = follower.position()
    app = services.app
    notifications = app.recorder.select_notifications(start=start + 1, limit=1000)
    back = notifications[skip % len(notifications)].id - 1 if notifications else start
    with view_of(services).store.transaction() as cursor:
        cursor.execute(
            "UPDATE projection_partitions SET position = %s WHERE projection = %s",
            (back, follower.name),
        )
    follower.batch_size = 3
    try:
        follower.catch_up()
    finally:
        follower.batch_size = 200
    assert rows(view_of(services)) == before
    assert follower.position() == position


def test_processing_an_event_again_changes_nothing(services: Services) -> None:
    model, tenants = _a_few_of_everything(services)
    assert_repeats_change_nothing(services, start=0)
    assert_lists(view_of(services), model, tenants)


@FEW
@given(commands=COMMANDS, skip=st.integers(0, 40))
def test_processing_any_events_again_changes_nothing(
    services: Services, commands: list[tuple[str, int, int, str, str]], skip: int
) -> None:
    tenants = fresh_tenants()
    start = services.listings.position()
    model = run_commands(services, commands, tenants)
    assert_repeats_change_nothing(services, start, skip)
    assert_lists(view_of(services), model, tenants)


@dataclass
class CrashingProjection:
    """Passes events on to the real projection, then dies while handling the n-th."""

    projection: Any
    crash_on: int
    handled: int = 0
    name: str = "listings"

    @property
    def store(self) -> Any:
        return self.projection.store

    def key(self) -> str:
        key: str = self.projection.key()
        return key

    def start(self) -> int:
        return 0

    def process(self, batch: Sequence[tuple[Any, int]], progress: Progress) -> None:
        for event, position in batch:
            self._count()
            self.projection.process([(event, position)], progress.at(position))

    def _count(self) -> None:
        self.handled += 1
        if self.handled == self.crash_on:
            raise RuntimeError("the process died here")


@FEW
@given(commands=COMMANDS, crash_on=st.integers(1, 30), batch=st.integers(1, 7))
def test_a_crash_part_way_resumes_without_loss_or_duplicates(
    services: Services,
    commands: list[tuple[str, int, int, str, str]],
    crash_on: int,
    batch: int,
) -> None:
    tenants = fresh_tenants()
    start = services.listings.position()
    model = run_commands(services, commands, tenants)
    written = services.app.recorder.max_notification_id() or 0
    notifications = services.app.recorder.select_notifications(start=start + 1, limit=1000)
    crashing: Any = CrashingProjection(view_of(services), crash_on)
    dying = Follower(
        services.app, crashing, services.locks, services.settings.partitions, batch_size=batch
    )
    if crash_on <= len(notifications):
        with pytest.raises(RuntimeError):
            dying.catch_up()
        assert dying.position() == (notifications[crash_on - 2].id if crash_on > 1 else start)
    else:
        dying.catch_up()

    restarted = build_services(services.settings)  # a new process on the same store
    try:
        assert restarted.listings.position() == dying.position()
        restarted.listings.catch_up()
        assert restarted.listings.position() == written
        assert_lists(view_of(restarted), model, tenants)
        for tenant in tenants:
            for kind in KINDS:
                ids = listed(view_of(restarted), kind, tenant)
                assert len(ids) == len(set(ids))
    finally:
        restarted.close()
    assert_lists(view_of(services), model, tenants)


def test_clear_and_catch_up_rebuilds_the_same_listing(services: Services) -> None:
    model, tenants = _a_few_of_everything(services)
    assert all(any(item.archived for item in model.items[kind]) for kind in KINDS)
    follower = services.listings
    follower.catch_up()
    before = rows(view_of(services))
    position = follower.position()
    assert_lists(view_of(services), model, tenants)

    view_of(services).clear()
    assert rows(view_of(services)) == []
    assert follower.position() == 0
    assert follower.lag() == position

    follower.catch_up()
    assert rows(view_of(services)) == before
    assert follower.position() == position
    assert_lists(view_of(services), model, tenants)


def test_lag_counts_the_events_behind_and_falls_to_zero(services: Services) -> None:
    follower = services.listings
    assert follower.lag() == 0
    assert follower.position() == 0
    model, tenants = _a_few_of_everything(services)
    written = services.app.recorder.max_notification_id()
    assert written >= 10
    services.app.issue_key(tenants[0], actor_for(tenants[0]))  # events it ignores count too
    written += 1
    assert services.app.recorder.max_notification_id() == written

    assert follower.lag() == written
    follower.batch_size = 4
    try:
        assert follower.run_once() == 4
        assert follower.position() == 4
        assert follower.lag() == written - 4
        follower.catch_up()
    finally:
        follower.batch_size = 200
    assert follower.lag() == 0
    assert follower.run_once() == 0
    assert_lists(view_of(services), model, tenants)

    character = model.live("character", tenants[0])[0]
    services.app.edit_character(tenants[0], character.id, {"name": "Otra"}, actor_for(tenants[0]))
    assert follower.lag() == 1
    follower.catch_up()
    assert follower.lag() == 0


def test_search_ignores_case_and_accents_and_takes_wildcards_literally(
    services: Services,
) -> None:
    app = services.app
    tenant, other = fresh_tenants()
    people = {
        "jose": ("José Martínez", "Curandero"),
        "josefina": ("JOSEFINA", ""),
        "ana": ("Ana", "100% natural"),
        "percent": ("Percy", "100 percent"),
        "snake": ("Sam", "snake_case fan"),
        "spaced": ("Oona", "one case"),
        "bang": ("Hi!", ""),
        "nino": ("Niño", "Pequeño"),
    }
    ids = {}
    for label, (name, description) in people.items():
        created = app.create_character(
            tenant, {"name": name, "description": description}, actor_for(tenant)
        )
        ids[label] = created.id
    app.create_character(other, {"name": "José", "description": "100%"}, actor_for(other))
    services.listings.catch_up()

    def found(query: str) -> set[str]:
        got = set(listed(view_of(services), "character", tenant, query=query))
        return {label for label, id_ in ids.items() if id_ in got}

    assert found("jose") == {"jose", "josefina"}
    assert found("JOSÉ") == {"jose", "josefina"}
    assert found(unicodedata.normalize("NFD", "José")) == {"jose", "josefina"}
    assert found("martinez") == {"jose"}
    assert found("MARTÍNEZ") == {"jose"}
    assert found("nino") == {"nino"}
    assert found("PEQUENO") == {"nino"}
    assert found("%") == {"ana"}
    assert found("100%") == {"ana"}
    assert found("100%n") == set()
    assert found("_") == {"snake"}
    assert found("e_c") == {"snake"}
    assert found("!") == {"bang"}
    assert found("!%") == set()
    assert found("'") == set()
    assert found("") == set(ids)
    assert found("zzz") == set()


def test_archiving_a_character_leaves_its_instances_listed(services: Services) -> None:
    """Instances outlive their character's archive in the domain (they still load), so they
    stay listed; the API answers 404 for the archived character's instance list itself."""
    model, tenants = _a_few_of_everything(services)
    services.listings.catch_up()
    archived = [item for item in model.items["character"] if item.archived]
    assert archived
    orphans = [
        item.id
        for item in model.live("instance", tenants[0])
        if item.parent in {character.id for character in archived}
    ]
    assert orphans
    assert set(orphans) <= set(listed(view_of(services), "instance", tenants[0]))
    for orphan in orphans:
        assert services.app.instance(tenants[0], orphan).id == orphan


def test_an_erasure_is_reported_done_only_once_the_store_s_log_is_wiped(
    services: Services,
) -> None:
    """Whoever waits for the listings to reach an erasure finds none of the erased name in the
    store's files, its write-ahead log included."""
    tenant = fresh_tenants()[0]
    actor = actor_for(tenant)
    character = services.app.create_character(tenant, {"name": "Rosa Secreta"}, actor)
    services.listings.catch_up()
    services.app.erase_character(tenant, character.id, actor)
    erased_at = services.app.recorder.max_notification_id()
    view = view_of(services)
    positions_at_wipe: list[int] = []
    wipe = view.store.wipe

    def watched_wipe() -> None:
        positions_at_wipe.append(services.listings.position())
        wipe()

    view.store.wipe = watched_wipe  # type: ignore[method-assign]
    services.listings.catch_up()
    assert positions_at_wipe and all(p < erased_at for p in positions_at_wipe)
    assert services.listings.position() == erased_at
