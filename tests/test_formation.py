"""Memory formation: after each turn the memory process asks the model (a stub server we
script) which facts to add, revise or forget, and records them as memory commands of its own,
with the messages they came from; long conversations get rolling summaries."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import Mapper

from alma.api.cli import projections_status
from alma.api.services import build_services
from alma.chat.duplicates import says_the_same
from alma.chat.extraction import (
    Line,
    Malformed,
    fact_list_extraction,
    fact_list_format,
    read_fact_list,
    read_operations,
)
from alma.chat.formation import MemoryFormation
from alma.domain import Actor, Alma, Memory, NewMessage
from alma.llm.local import shared_server
from alma.projections.ranking import fold
from alma.settings import Settings
from tests.conftest import Api, make_character, make_instance, running_api, store_settings
from tests.openai_stub import Fail, OpenAIStub, Reply
from tests.test_observability import _metric

FACTS = "decide what is worth remembering"
SUMMARY = "Summarise the stretch"
DROPPED = "alma_memory_extractions_dropped_total"
DEFERRED = "alma_memory_formation_deferred_total"


def _forming(settings: Settings, stub: OpenAIStub, **more: Any) -> Settings:
    return settings.model_copy(
        update={
            "openai_api_key": None,
            "openai_base_url": stub.base_url,
            "memory_formation": True,
            "model_timeout_s": 5.0,
            "model_max_retries": 1,
            **more,
        }
    )


@pytest.fixture
def forming(settings: Settings, openai_stub: OpenAIStub) -> Iterator[Api]:
    with running_api(_forming(settings, openai_stub)) as api:
        yield api


def _instance(api: Api, name: str = "Rosa", headers: dict[str, str] | None = None) -> str:
    if headers is None:
        character = make_character(api)
        return str(make_instance(api, character["id"], name=name)["id"])
    character = api.client.post(
        "/v1/characters", json={"name": "Doña Rosa", "description": "Curandera"}, headers=headers
    ).json()
    created = api.client.post(
        f"/v1/characters/{character['id']}/instances", json={"name": name}, headers=headers
    )
    return str(created.json()["id"])


def _local(formation: object) -> bool:
    assert isinstance(formation, MemoryFormation)
    return formation.local


def _formation(api: Api) -> MemoryFormation:
    assert api.services.formation is not None
    formation = api.services.formation.model
    assert isinstance(formation, MemoryFormation)
    return formation


def _settle(api: Api, timeout: float = 60) -> None:
    """Waits until the memory process has handled everything written, then the index."""
    assert api.services.formation is not None
    assert api.services.formation.wait(api.written(), timeout)
    assert api.services.memory.wait(api.written(), timeout)


def _counted(api: Api, name: str, **labels: str) -> float:
    """A counter's value at /metrics (0 until it first counts: the process's, every test's)."""
    try:
        return _metric(api.client.get("/metrics").text, name, **labels)
    except AssertionError:
        return 0.0


def _turn(
    api: Api,
    stub: OpenAIStub,
    instance: str,
    message: str,
    operations: object,
    request_id: str = "turn-1",
    then: tuple[Reply, ...] = (),
) -> dict[str, Any]:
    """One chat turn; `operations` is the memory process's answer, `then` any further ones."""
    answer = operations if isinstance(operations, str) else json.dumps(operations)
    stub.script(Reply("Mm-hm."), Reply(answer), *then)
    response = api.client.post(
        f"/v1/instances/{instance}/chat",
        json={"message": message},
        headers={**api.acme, "X-Request-ID": request_id},
    )
    assert response.status_code == 200, response.text
    _settle(api)
    body: dict[str, Any] = response.json()
    return body


def _memories(api: Api, instance: str, headers: dict[str, str] | None = None) -> list[Any]:
    response = api.client.get(f"/v1/instances/{instance}/memories", headers=headers or api.acme)
    assert response.status_code == 200, response.text
    items: list[Any] = response.json()["items"]
    return items


def _audit(api: Api, instance: str) -> list[Any]:
    response = api.client.get(f"/v1/instances/{instance}/memory/audit", headers=api.acme)
    items: list[Any] = response.json()["items"]
    return [item for item in items if item["kind"] != "memory_text"]


def _search(api: Api, instance: str, q: str) -> list[Any]:
    response = api.client.get(
        f"/v1/instances/{instance}/memories/search",
        params={"q": q, "consistent": "true"},
        headers=api.acme,
    )
    results: list[Any] = response.json()["results"]
    return results


def _requests(stub: OpenAIStub, instruction: str) -> list[dict[str, Any]]:
    return [r for r in stub.requests if instruction in r["messages"][0]["content"]]


def _asked(stub: OpenAIStub, instruction: str) -> list[str]:
    """What the memory process sent the model: the user message of each such request."""
    return [str(r["messages"][1]["content"]) for r in _requests(stub, instruction)]


def _ids(turn: dict[str, Any]) -> list[str]:
    return [turn["turn"]["message_id"], turn["turn"]["reply_id"]]


def test_a_stated_fact_becomes_a_memory_of_the_memory_process(
    forming: Api, openai_stub: OpenAIStub
) -> None:
    instance = _instance(forming)
    forming.client.post(
        f"/v1/instances/{instance}/memories",
        json={"text": "Le encanta el mole negro"},
        headers=forming.acme,
    )
    fact = "La hermana del usuario, Lucía, es enfermera en Triana"
    turn = _turn(
        forming,
        openai_stub,
        instance,
        "Mi hermana Lucía es enfermera en Triana",
        [{"op": "add", "text": fact, "importance": 0.8}],
        request_id="req-lucia",
    )

    [by_hand, formed] = _memories(forming, instance)
    assert by_hand["text"] == "Le encanta el mole negro"
    assert formed["text"] == fact
    assert formed["importance"] == 0.8
    assert formed["metadata"] == {"kind": "fact"}
    assert formed["source"] == {"messages": _ids(turn)}
    found = {hit["id"]: hit["source"] for hit in _search(forming, instance, "¿Qué hace Lucía?")}
    assert found[formed["id"]] == "memory"
    [typed, added] = _audit(forming, instance)
    assert typed["source"] is None  # written through the API by hand
    assert (added["kind"], added["memory_id"], added["after"], added["source"]) == (
        "memory_added",
        formed["id"],
        fact,
        {"messages": _ids(turn)},
    )
    assert added["actor"] == {
        "tenant": "acme",
        "key_id": "memory-process",
        "request_id": "req-lucia",
    }
    [request] = _requests(openai_stub, FACTS)
    assert (request["model"], request["temperature"]) == ("gpt-3.5-turbo", 0.0)
    [asked] = _asked(openai_stub, FACTS)
    assert f"{by_hand['id']}: Le encanta el mole negro" in asked
    assert "user: Mi hermana Lucía es enfermera en Triana" in asked
    assert "Rosa: Mm-hm." in asked


def test_a_contradiction_revises_the_memory_and_forget_that_forgets_it(
    forming: Api, openai_stub: OpenAIStub
) -> None:
    instance = _instance(forming)
    lived = _turn(
        forming,
        openai_stub,
        instance,
        "Vivo en Sevilla",
        [{"op": "add", "text": "El usuario vive en Sevilla"}],
    )
    [memory] = _memories(forming, instance)

    moved = _turn(
        forming,
        openai_stub,
        instance,
        "Ya no vivo en Sevilla: me mudé a Madrid",
        [{"op": "revise", "id": memory["id"], "text": "El usuario vive en Madrid"}],
        request_id="req-moved",
    )
    [revised] = _memories(forming, instance)
    assert (revised["id"], revised["text"]) == (memory["id"], "El usuario vive en Madrid")
    assert revised["source"] == {"messages": _ids(moved)}
    assert f"{memory['id']}: El usuario vive en Sevilla" in _asked(openai_stub, FACTS)[1]

    forgot = _turn(
        forming,
        openai_stub,
        instance,
        "Olvida dónde vivo, por favor",
        [{"op": "forget", "id": memory["id"]}],
        request_id="req-forget",
    )
    assert _memories(forming, instance) == []
    assert memory["id"] not in [hit["id"] for hit in _search(forming, instance, "Madrid")]
    # The audit says who changed the memory, in which request, and which messages led to it.
    kinds = [
        (e["kind"], e["actor"]["key_id"], e["actor"]["request_id"], e["source"])
        for e in _audit(forming, instance)
    ]
    assert kinds == [
        ("memory_added", "memory-process", "turn-1", {"messages": _ids(lived)}),
        ("memory_revised", "memory-process", "req-moved", {"messages": _ids(moved)}),
        ("memory_forgotten", "memory-process", "req-forget", {"messages": _ids(forgot)}),
    ]


def test_malformed_answers_write_nothing_are_counted_and_formation_carries_on(
    forming: Api, openai_stub: OpenAIStub
) -> None:
    instance = _instance(forming)
    written = forming.written()
    reasons = ("not_json", "wrong_shape", "empty")
    before = {r: _counted(forming, DROPPED, reason=r) for r in reasons}
    _turn(forming, openai_stub, instance, "Me llamo Ana", "¡Claro! Recordaré que se llama Ana.")
    _turn(forming, openai_stub, instance, "Tengo 30 años", [{"op": "add", "txt": "30 años"}])
    _turn(forming, openai_stub, instance, "Vivo en Quito", "")
    assert _formation(forming).dropped == 3
    assert {r: _counted(forming, DROPPED, reason=r) - before[r] for r in reasons} == {
        "not_json": 1,
        "wrong_shape": 1,
        "empty": 1,
    }
    assert _audit(forming, instance) == []
    assert forming.written() == written + 6  # the three turns, nothing else

    _turn(
        forming, openai_stub, instance, "Soy de Quito", [{"op": "add", "text": "Ana es de Quito"}]
    )
    assert [m["text"] for m in _memories(forming, instance)] == ["Ana es de Quito"]


def test_memories_of_other_instances_and_tenants_are_never_touched(
    forming: Api, openai_stub: OpenAIStub
) -> None:
    instance = _instance(forming)
    other = _instance(forming, "Rosa 2")
    rival = _instance(forming, "Rosa", headers=forming.rival)
    mine = forming.client.post(
        f"/v1/instances/{other}/memories", json={"text": "Secreto de Rosa 2"}, headers=forming.acme
    ).json()
    theirs = forming.client.post(
        f"/v1/instances/{rival}/memories", json={"text": "Secreto ajeno"}, headers=forming.rival
    ).json()

    _turn(
        forming,
        openai_stub,
        instance,
        "Cuéntame secretos",
        [
            {"op": "revise", "id": theirs["id"], "text": "robado"},
            {"op": "forget", "id": theirs["id"]},
            {"op": "forget", "id": mine["id"]},
            {"op": "add", "text": "Al usuario le gustan los secretos"},
        ],
    )

    assert _formation(forming).refused == 3
    assert [m["text"] for m in _memories(forming, instance)] == [
        "Al usuario le gustan los secretos"
    ]
    assert [m["text"] for m in _memories(forming, other)] == ["Secreto de Rosa 2"]
    assert [m["text"] for m in _memories(forming, rival, forming.rival)] == ["Secreto ajeno"]


def test_a_crash_after_the_commands_and_a_replay_duplicate_nothing(
    forming: Api, openai_stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = _instance(forming)
    formation = _formation(forming)
    apply = formation._apply
    crashes: list[str] = []

    def crashing(*args: Any) -> None:
        apply(*args)
        if not crashes:
            crashes.append("crashed")
            raise RuntimeError("the process died after its commands")

    monkeypatch.setattr(formation, "_apply", crashing)
    before = forming.services.formation.position()  # type: ignore[union-attr]
    _turn(
        forming,
        openai_stub,
        instance,
        "Mi gato se llama Tizón",
        [{"op": "add", "text": "El gato del usuario se llama Tizón"}],
    )
    assert crashes
    assert len(_asked(openai_stub, FACTS)) == 1  # the stored answer was used again

    with formation.store.transaction() as cursor:  # the whole turn once more, from the log
        cursor.execute("UPDATE projection_partitions SET position = %s", (before,))
    _settle(forming)

    assert [m["text"] for m in _memories(forming, instance)] == [
        "El gato del usuario se llama Tizón"
    ]
    assert [e["kind"] for e in _audit(forming, instance)] == ["memory_added"]
    assert len(_asked(openai_stub, FACTS)) == 1


def test_a_formed_memory_is_edited_and_forgotten_like_any_other(
    forming: Api, openai_stub: OpenAIStub
) -> None:
    instance = _instance(forming)
    _turn(forming, openai_stub, instance, "I love jazz", [{"op": "add", "text": "Loves jazz"}])
    [memory] = _memories(forming, instance)
    path = f"/v1/instances/{instance}/memories/{memory['id']}"

    edited = forming.client.patch(path, json={"text": "Loves jazz and blues"}, headers=forming.acme)
    assert edited.status_code == 200, edited.text
    assert forming.client.delete(path, headers=forming.acme).status_code == 204
    assert _memories(forming, instance) == []
    actors = [e["actor"]["key_id"] for e in _audit(forming, instance)]
    assert actors[0] == "memory-process"
    assert "memory-process" not in actors[1:]


def test_the_model_being_down_delays_formation_without_losing_the_turn(
    forming: Api, openai_stub: OpenAIStub
) -> None:
    instance = _instance(forming)
    openai_stub.script(
        Reply("Mm-hm."), Fail(500), Fail(503), Reply('[{"op": "add", "text": "Has a dog"}]')
    )
    response = forming.client.post(
        f"/v1/instances/{instance}/chat", json={"message": "I have a dog"}, headers=forming.acme
    )
    assert response.status_code == 200
    _settle(forming)
    assert [m["text"] for m in _memories(forming, instance)] == ["Has a dog"]


def test_imported_messages_are_formed_in_windows(forming: Api, openai_stub: OpenAIStub) -> None:
    instance = _instance(forming)
    openai_stub.script(Reply('[{"op": "add", "text": "The user plays the cello"}]'))
    messages = [
        {"role": "user" if n % 2 == 0 else "assistant", "content": f"message {n}"}
        for n in range(12)
    ]
    messages[3]["content"] = "I play the cello"
    imported = forming.client.post(
        f"/v1/instances/{instance}/messages", json={"messages": messages}, headers=forming.acme
    ).json()["ids"]
    _settle(forming)

    [asked] = _asked(openai_stub, FACTS)
    assert "message 9" in asked and "message 10" not in asked
    [memory] = _memories(forming, instance)
    assert memory["source"] == {"messages": imported[:10]}


def test_formed_memories_happened_when_their_messages_were_said_and_know_whose(
    forming: Api, openai_stub: OpenAIStub
) -> None:
    instance = _instance(forming)
    openai_stub.script(
        Reply(
            json.dumps(
                [
                    {
                        "op": "add",
                        "text": "Caroline went to a support group",
                        "speaker": "Caroline",
                    },
                    {"op": "add", "text": "Melanie pinta atardeceres", "speaker": "Melanie"},
                    {"op": "add", "text": "They talk every week", "speaker": "Someone else"},
                ]
            )
        )
    )
    messages = [
        {
            "role": "user" if n % 2 == 0 else "assistant",
            "content": f"message {n}",
            "name": "Caroline" if n % 2 == 0 else "Melanie",
            "timestamp": f"2023-05-08T13:{n:02d}:00Z",
        }
        for n in range(10)
    ]
    messages[0]["content"] = "Yesterday I went to a support group"
    messages[1]["content"] = "Yo pinto atardeceres"
    imported = forming.client.post(
        f"/v1/instances/{instance}/messages", json={"messages": messages}, headers=forming.acme
    )
    assert imported.status_code == 201, imported.text
    _settle(forming)

    [asked] = _asked(openai_stub, FACTS)
    assert "Caroline: Yesterday I went to a support group" in asked
    assert "Melanie: Yo pinto atardeceres" in asked
    formed = {m["text"]: (m["occurred_at"], m["speaker"]) for m in _memories(forming, instance)}
    assert formed == {  # the latest message's time; a name not in the conversation is dropped
        "Caroline went to a support group": ("2023-05-08T13:09:00Z", "Caroline"),
        "Melanie pinta atardeceres": ("2023-05-08T13:09:00Z", "Melanie"),
        "They talk every week": ("2023-05-08T13:09:00Z", None),
    }


def test_a_fact_told_twice_is_remembered_once(forming: Api, openai_stub: OpenAIStub) -> None:
    """The local model is not shown the instance's memories: told a fact again, it adds it again.
    A memory that says nothing one already there (or one of the same answer) does not is left out
    and counted; one that says more, or another person's, is kept."""
    instance = _instance(forming)
    duplicates = _counted(forming, DROPPED, reason="duplicate")
    _turn(
        forming,
        openai_stub,
        instance,
        "Tengo un loro que se llama Perico.",
        [{"op": "add", "text": "El usuario tiene un loro llamado Perico"}],
    )
    _turn(
        forming,
        openai_stub,
        instance,
        "Perico, mi loro, habla mucho. Mi hermana también tiene un loro.",
        [
            {"op": "add", "text": "El loro del usuario se llama Perico"},  # told before
            {"op": "add", "text": "El loro del usuario, Perico, habla mucho"},
            {"op": "add", "text": "Perico habla mucho"},  # the note before says it
            {"op": "add", "text": "La hermana del usuario tiene un loro"},  # hers
        ],
        request_id="turn-2",
    )
    assert sorted(m["text"] for m in _memories(forming, instance)) == [
        "El loro del usuario, Perico, habla mucho",
        "El usuario tiene un loro llamado Perico",
        "La hermana del usuario tiene un loro",
    ]
    assert _counted(forming, DROPPED, reason="duplicate") == duplicates + 2


@pytest.mark.parametrize(
    ("new", "existing", "repeats"),
    [
        ("Marta es la novia del usuario", "La novia del usuario se llama Marta", True),
        ("The user is allergic to peanuts", "The user is very allergic to peanuts", True),
        ("El usuario es profesor", "El usuario es profesor de matemáticas", True),
        ("El usuario es profesor de matemáticas", "El usuario es profesor", False),
        ("El usuario es enfermero", "El usuario es enfermero en Triana", False),  # whose?
        ("El usuario vive en Madrid", "El usuario vive en Sevilla", False),
        ("The user's birthday is on 14 May", "The user's birthday is on 14 March", False),
        ("The user likes jazz", "The user does not like jazz", False),
        ("El usuario tiene dos gatos", "El usuario tiene tres gatos", False),
        ("Su código es 11-11", "Su código es 11-110", False),
        ("Nació en 1990", "Nació el 11 de mayo de 1990", True),
        ("El usuario es profesor", "La hermana del usuario es profesora", False),
        ("The user is a nurse", "The user knows Sam, who is a nurse", False),
    ],
)
def test_a_memory_repeats_another_only_when_it_says_nothing_more_of_the_same_person(
    new: str, existing: str, repeats: bool
) -> None:
    assert says_the_same(new, existing) is repeats


def test_messages_held_by_an_earlier_version_are_formed_after_an_upgrade(
    forming: Api, openai_stub: OpenAIStub
) -> None:
    """An earlier version held messages without when and by whom: opening its store adds the
    columns, and a memory formed with such a message is dated by the messages that say when."""
    instance = _instance(forming)
    formation = _formation(forming)
    with formation.store.transaction() as cursor:
        cursor.execute("ALTER TABLE formation_messages DROP COLUMN occurred_at")
        cursor.execute("ALTER TABLE formation_messages DROP COLUMN name")
        cursor.execute(
            "INSERT INTO formation_messages (instance_id, position, tenant, message_id, role, "
            "content, request_id, formed) VALUES (%s, 0, 'acme', %s, 'user', %s, 'old', 0)",
            (instance, str(uuid.uuid4()), "Tengo un perro que se llama Trufa"),
        )
    MemoryFormation(
        formation.app, formation.store, formation.index, formation.index_wait, formation.model
    )
    assert formation.store.has_column("formation_messages", "name")

    openai_stub.script(Reply('[{"op": "add", "text": "Tiene una perra, Trufa", "speaker": "Ana"}]'))
    messages = [
        {"role": "user", "content": f"mensaje {n}", "name": "Ana", "timestamp": f"2024-01-0{n}"}
        for n in range(1, 10)
    ]
    imported = forming.client.post(
        f"/v1/instances/{instance}/messages", json={"messages": messages}, headers=forming.acme
    )
    assert imported.status_code == 201, imported.text
    _settle(forming)

    [asked] = _asked(openai_stub, FACTS)
    assert "user: Tengo un perro que se llama Trufa" in asked and "Ana: mensaje 9" in asked
    [memory] = _memories(forming, instance)
    assert (memory["occurred_at"], memory["speaker"]) == ("2024-01-09T00:00:00Z", "Ana")


@pytest.mark.slow
def test_long_conversations_get_rolling_summaries(
    settings: Settings, openai_stub: OpenAIStub
) -> None:
    with running_api(_forming(settings, openai_stub, summary_every=4)) as api:
        instance = _instance(api)
        first = _turn(api, openai_stub, instance, "Hoy fuimos al mercado", [])
        told = Reply("Rosa y el usuario fueron al mercado y hablaron de Lucía.")
        second = _turn(api, openai_stub, instance, "Lucía compró flores", [], then=(told,))
        [summary] = _memories(api, instance)
        assert summary["text"] == "Rosa y el usuario fueron al mercado y hablaron de Lucía."
        assert summary["metadata"] == {"kind": "summary"}
        assert summary["source"] == {"messages": _ids(first) + _ids(second)}

        _turn(api, openai_stub, instance, "Mañana vamos al río", [])
        planned = Reply("Planearon ir al río.")
        fourth = _turn(api, openai_stub, instance, "Llevaré pan", [], then=(planned,))
        [_, later] = _memories(api, instance)
        assert later["text"] == "Planearon ir al río."
        assert later["source"]["previous_summary"] == summary["id"]
        assert fourth["turn"]["reply_id"] in later["source"]["messages"]
        [_, asked] = _asked(openai_stub, SUMMARY)
        assert "Rosa y el usuario fueron al mercado" in asked
        assert "user: Mañana vamos al río" in asked and "Hoy fuimos" not in asked


def test_formation_runs_by_default_with_any_model_until_switched_off(tmp_path: Any) -> None:
    local = Settings(_env_file=None, data_dir=tmp_path, openai_api_key=None, openai_base_url=None)  # type: ignore[call-arg]
    server = local.model_copy(update={"openai_base_url": "http://127.0.0.1:9/v1"})
    cases = {
        "local model": local,
        "model server": server,
        "local, switched off": local.model_copy(update={"memory_formation": False}),
        "server, switched off": server.model_copy(update={"memory_formation": False}),
    }
    running = {}
    for case, settings in cases.items():
        services = build_services(settings)
        try:
            formation = services.formation
            running[case] = formation and (formation.name, _local(formation.model))
        finally:
            services.close()
    assert running == {
        "local model": ("memory-formation", True),
        "model server": ("memory-formation", False),
        "local, switched off": None,
        "server, switched off": None,
    }


def test_projections_status_lists_the_memory_process(
    forming: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    projections_status(forming.services)
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("memory-formation\tposition ") for line in lines)


@pytest.mark.parametrize(
    "answer",
    [
        "not json",
        '{"op": "add", "text": "x"}',
        '[{"op": "remember", "text": "x"}]',
        '[{"op": "add", "text": "x", "reason": "why"}]',
        '[{"op": "add", "text": 3}]',
        '[{"op": "forget"}]',
        '[{"op": "add", "text": "x", "importance": "high"}]',
        '[{"op": "add", "text": "x", "speaker": 7}]',
        '[{"op": "revise", "id": "m1", "text": "x", "speaker": "Ana"}]',
    ],
)
def test_answers_that_are_not_operations_are_malformed(answer: str) -> None:
    with pytest.raises(Malformed):
        read_operations(answer, set())


def test_operations_are_read_strictly() -> None:
    offered = {"6f1c7a52-3f8e-4c1e-9d4b-2b7f5c0e9a11"}
    answer = (
        "```json\n"
        + json.dumps(
            {
                "operations": [
                    {"op": "add", "text": "Lucía es enfermera", "importance": 0.9},
                    {"op": "revise", "id": next(iter(offered)), "text": "Vive en Madrid"},
                    {"op": "forget", "id": "not-offered"},
                    {"op": "add", "text": "   "},
                    {"op": "add", "text": "x", "importance": 7},
                ]
            }
        )
        + "\n```"
    )
    operations, refused = read_operations(answer, offered)
    assert [(o.op, o.text) for o in operations] == [
        ("add", "Lucía es enfermera"),
        ("revise", "Vive en Madrid"),
    ]
    assert refused == 3


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("", "empty"),
        ("  ", "empty"),
        ("[{", "not_json"),
        ('{"kind": "work", "text": "x"}', "wrong_shape"),
        ('[{"text": "El usuario es profesor"}]', "wrong_shape"),
        ('[{"kind": "job", "text": "El usuario es profesor"}]', "wrong_shape"),
        ('[{"op": "add", "kind": "work", "text": "x"}]', "wrong_shape"),
        ('[{"kind": "work", "text": 3}]', "wrong_shape"),
    ],
)
def test_local_answers_that_are_not_notes_are_malformed(answer: str, reason: str) -> None:
    with pytest.raises(Malformed) as dropped:
        read_fact_list(answer, "Soy profesor")
    assert dropped.value.reason == reason


def test_local_notes_become_facts_of_the_user_and_small_talk_is_left_out() -> None:
    stated = "Hace un día precioso. Soy profesora en Cádiz."
    answer = json.dumps(
        [
            {"kind": "small talk", "text": "Carmen saluda"},
            {"kind": "work", "text": "Carmen es profesora en Cádiz"},
            {"kind": "work", "text": "carmen es profesora en cadiz"},  # said twice: once
            {"kind": "small talk", "text": "Hace un día precioso"},
            {"kind": "home", "text": "Hace un día precioso"},  # small talk under another label
            {"kind": "home", "text": "Carmen está sentada en su sofá"},  # no word of hers
            {"kind": "plan", "text": "   "},
        ]
    )
    operations, refused = read_fact_list(answer, stated, "Carmen")
    assert [(o.op, o.text, o.speaker) for o in operations] == [
        ("add", "Carmen es profesora en Cádiz", "Carmen")
    ]
    assert refused == 2  # the made-up note, the blank one


def test_the_local_model_is_asked_about_what_the_user_said_in_their_language() -> None:
    """Only what the user stated: no questions, the character's name left out where it addresses
    it (the 1.5B took it for the subject); and the language (told nothing, it wrote English)."""
    extraction = fact_list_extraction(
        "Rosa",
        [
            Line("assistant", "¡Buenas! ¿Qué tal el día?"),
            Line("user", "Rosa, mi hermana Lucía es enfermera en Triana. ¿Te lo dije?", "Carmen"),
            Line("assistant", "¡Qué bien! Dale recuerdos a Lucía.", "Rosa"),
        ],
        1365,
    )
    assert extraction is not None
    *examples, asked = extraction.messages
    assert asked == {
        "role": "user",
        "content": "Carmen (the user) said, in Spanish:\nmi hermana Lucía es enfermera en Triana.",
    }
    assert examples[0]["role"] == "system" and "JSON list of notes" in examples[0]["content"]
    assert extraction.sampling == {"response_format": fact_list_format()}
    for nothing in ([Line("assistant", "¡Buenas!")], [Line("user", "Rosa, ¿qué tal?")]):
        assert fact_list_extraction("Rosa", nothing, 1365) is None  # nothing stated


def test_the_first_run_starts_at_the_end_of_the_log(
    settings: Settings, openai_stub: OpenAIStub
) -> None:
    services = build_services(_forming(settings, openai_stub))
    try:
        app, actor = services.app, Actor("acme", "test", "before")
        character = app.create_character("acme", {"name": "Rosa", "description": "x"}, actor)
        instance = app.create_instance("acme", character.id, "Rosa", "", actor)
        old = [NewMessage("user", f"an old message {n}") for n in range(12)]
        app.import_messages("acme", instance.id, old, actor)
        assert services.formation is not None
        assert services.formation.position() == app.recorder.max_notification_id()
        services.formation.catch_up()
        assert openai_stub.requests == []
    finally:
        services.close()


def test_revisions_and_forgettings_recorded_before_provenance_still_load() -> None:
    app, actor = Alma(), Actor("acme", "test", "old")
    memory = Memory.add("acme", uuid.uuid4(), "Vive en Sevilla", actor)
    memory.change(actor, text="Vive en Madrid")
    memory.forget(actor)
    replayed = None
    unencrypted = Mapper(app.mapper.transcoder)  # as events were stored before erasure keys
    for event in memory.collect_events():
        stored = unencrypted.to_stored_event(event)
        state = json.loads(stored.state)
        if "source" in state and type(event) is not Memory.Added:
            del state["source"]  # as written before Revised and Forgotten had it
        old = type(stored)(
            stored.originator_id,
            stored.originator_version,
            stored.topic,
            json.dumps(state).encode(),
        )
        replayed = app.mapper.to_domain_event(old).mutate(replayed)
    assert replayed is not None
    assert (replayed.text, replayed.forgotten, replayed.source) == ("Vive en Madrid", True, None)


def test_memory_model_names_another_model_for_formation(
    settings: Settings, openai_stub: OpenAIStub
) -> None:
    with running_api(_forming(settings, openai_stub, memory_model="gpt-4o-mini")) as api:
        instance = _instance(api)
        _turn(
            api, openai_stub, instance, "I live in Lima", [{"op": "add", "text": "Lives in Lima"}]
        )
        [chat, formation] = openai_stub.requests
        assert (chat["model"], formation["model"]) == ("gpt-3.5-turbo", "gpt-4o-mini")
        assert [m["text"] for m in _memories(api, instance)] == ["Lives in Lima"]


def test_a_fork_brings_what_was_formed_and_does_not_form_it_again(
    forming: Api, openai_stub: OpenAIStub
) -> None:
    instance = _instance(forming)
    fact = "El usuario tiene un loro llamado Perico"
    _turn(forming, openai_stub, instance, "Mi loro se llama Perico", [{"op": "add", "text": fact}])
    asked = len(openai_stub.requests)

    fork = forming.client.post(
        f"/v1/instances/{instance}/fork", json={"name": "Rosa bis"}, headers=forming.acme
    )
    assert fork.status_code == 201, fork.text
    _settle(forming)

    assert [m["text"] for m in _memories(forming, fork.json()["id"])] == [fact]
    assert len(openai_stub.requests) == asked  # the copied turn is not sent to be formed again


# The local model, with no key: what a machine with nothing configured does.


@pytest.fixture
def offline(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """No key, formation on. One store (SQLite): the model's part is what is proven here, each
    minute of which CI pays; the stores' part is proven above, with the stub."""
    with store_settings("sqlite", tmp_path, request) as settings:
        yield settings.model_copy(update={"memory_formation": True})


def _say(api: Api, instance: str, message: str) -> dict[str, Any]:
    said = api.client.post(
        f"/v1/instances/{instance}/chat",
        json={"message": message, "max_tokens": 16},
        headers=api.acme,
    )
    assert said.status_code == 200, said.text
    body: dict[str, Any] = said.json()
    return body


@pytest.mark.slow
def test_offline_the_default_local_model_remembers_what_the_user_said(offline: Settings) -> None:
    with running_api(offline) as api:
        instance = _instance(api)
        turn = _say(api, instance, "Mi hermana Lucía es enfermera en Triana")
        _settle(api, 900)  # a 1.5B on a loaded machine

        formed = _memories(api, instance)
        told = [m for m in formed if all(w in fold(m["text"]) for w in ("lucia", "enfermera"))]
        assert told, formed
        memory = told[0]
        assert memory["source"] == {"messages": _ids(turn)}
        [added, *_] = [e for e in _audit(api, instance) if e["memory_id"] == memory["id"]]
        assert added["actor"]["key_id"] == "memory-process"
        found = [hit["id"] for hit in _search(api, instance, "¿Qué hace Lucía?")]
        assert memory["id"] in found[:3]


@pytest.mark.slow
def test_a_chat_arriving_while_the_local_model_forms_memories_takes_it_over(
    offline: Settings,
) -> None:
    # Chats wait 0.05 s at most for the model: one behind formation's answer would be refused.
    settings = offline.model_copy(
        update={"local_model": "smollm2-135m", "local_queue_timeout_s": 0.05}  # small and fast
    )
    with running_api(settings) as api:
        instance = _instance(api)
        warmer = api.services.warmer
        assert warmer is not None and warmer.wait_idle(300)  # its opening read ahead, first
        turns = shared_server(
            "smollm2-135m", context=settings.local_context_window, cache_dir=settings.model_cache()
        ).turns
        gave_way = _counted(api, DEFERRED, reason="gave_way")
        _say(api, instance, LONG_STORY)
        for _ in range(12_000):  # formation takes the model once the reply is recorded
            if turns.holder == "background":
                break
            time.sleep(0.01)
        assert turns.holder == "background"

        _say(api, instance, "¿Y tú qué tal estás hoy?")  # answered: formation gave way
        _settle(api, 600)  # and formed both turns afterwards
        assert _counted(api, DEFERRED, reason="gave_way") > gave_way


LONG_STORY = (
    "Te cuento lo de este verano, que fue largo. En junio me mudé de Sevilla a Cádiz porque "
    "me dieron plaza de profesor de matemáticas en un instituto del barrio de La Viña. Mi "
    "hermana Lucía, que es enfermera en Triana, me ayudó con la mudanza y se quedó dos semanas. "
    "Adopté un galgo que se llama Trueno; corre muchísimo por la playa de la Caleta. En agosto "
    "fuimos a Japón con mi novia Marta, que estudió japonés dos años, y vimos los templos de "
    "Kioto. Soy alérgico a la miel, así que allí tuve que tener cuidado con los dulces. El 14 "
    "de marzo cumplo cuarenta años y quiero hacer una sardinada en Bouzas con todos mis amigos."
)
