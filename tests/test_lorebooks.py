"""Lorebooks (world info): each option of the cards' `character_book` and SillyTavern, seen in the
prompt the model server receives; their history, tenancy, and bad input."""

from __future__ import annotations

import io
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hypothesis
from hypothesis import strategies as st

from alma.api.services import Services, build_services
from alma.chat.macros import day
from alma.domain import Actor, Character
from alma.domain.lore_keys import present
from alma.domain.transfer import export_tenant, import_events, read_events
from alma.llm import tokens
from alma.settings import Settings
from tests.conftest import Api, make_character, make_instance
from tests.openai_stub import OpenAIStub
from tests.test_erasure import caught_up, erase, leftovers, marker

MARK = re.compile(r"LORE-[A-Z0-9]+")


def _book(api: Api, entries: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    body = {"name": "La sierra", **fields, "entries": entries}
    response = api.client.post("/v1/lorebooks", json=body, headers=api.acme)
    assert response.status_code == 201, response.text
    book: dict[str, Any] = response.json()
    return book


def _instance(api: Api, *lorebooks: dict[str, Any], said: tuple[str, ...] = ()) -> str:
    character = make_character(api, name="Doña Rosa", description="Curandera de la sierra")
    instance = make_instance(api, character["id"], name=f"Rosa {uuid.uuid4().hex[:8]}")
    instance_id = str(instance["id"])
    response = api.client.put(
        f"/v1/instances/{instance_id}/lorebooks",
        json={"lorebook_ids": [b["id"] for b in lorebooks]},
        headers=api.acme,
    )
    assert response.status_code == 200, response.text
    if said:
        turns = [
            {"role": "user" if n % 2 == 0 else "assistant", "content": text}
            for n, text in enumerate(said)
        ]
        response = api.client.post(
            f"/v1/instances/{instance_id}/messages", json={"messages": turns}, headers=api.acme
        )
        assert response.status_code == 201, response.text
    return instance_id


def _turn(
    api: Api, stub: OpenAIStub, instance_id: str, message: str
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    response = api.client.post(
        f"/v1/instances/{instance_id}/chat", json={"message": message}, headers=api.acme
    )
    assert response.status_code == 200, response.text
    messages: list[dict[str, str]] = stub.requests[-1]["messages"]
    return response.json(), messages


def _marks(messages: list[dict[str, str]]) -> list[str]:
    """The entries in the prompt, by their marks, in the order they appear."""
    return [m for message in messages for m in MARK.findall(message["content"])]


def _entries_seen(
    api: Api, stub: OpenAIStub, entries: list[dict[str, Any]], message: str, **book: Any
) -> list[str]:
    instance = _instance(api, _book(api, entries, **book))
    _, messages = _turn(api, stub, instance, message)
    return _marks(messages)


def test_keys_match_as_sillytavern_matches_them(chat_api: Api, openai_stub: OpenAIStub) -> None:
    entries = [
        {"keys": ["Lucía"], "content": "LORE-PLAIN: Lucía es enfermera."},
        {"keys": ["Rosa"], "case_sensitive": True, "content": "LORE-CASE"},
        {"keys": ["sal"], "match_whole_words": True, "content": "LORE-WORD"},
        {"keys": ["/herman[ao]s?\\b/i"], "content": "LORE-REGEX"},
        {"keys": ["Lucía"], "enabled": False, "content": "LORE-DISABLED"},
        {"keys": [], "constant": True, "content": "LORE-CONSTANT"},
        {"keys": ["Oaxaca"], "content": "LORE-ABSENT"},
    ]
    seen = _entries_seen(chat_api, openai_stub, entries, "¿Y LUCÍA? Mis HERMANOS y la salsa, rosa")
    assert sorted(seen) == ["LORE-CONSTANT", "LORE-PLAIN", "LORE-REGEX"]

    seen = _entries_seen(chat_api, openai_stub, entries, "Rosa, pásame la sal.")
    assert sorted(seen) == ["LORE-CASE", "LORE-CONSTANT", "LORE-WORD"]


def test_secondary_keys_follow_their_logic(chat_api: Api, openai_stub: OpenAIStub) -> None:
    def entry(logic: str) -> dict[str, Any]:
        return {
            "keys": ["Lucía"],
            "secondary_keys": ["enfermera", "Triana"],
            "selective_logic": logic,
            "content": f"LORE-{logic.replace('_', '').upper()}",
        }

    logics = ["and_any", "and_all", "not_any", "not_all"]
    unselective = {**entry("and_all"), "selective": False, "content": "LORE-UNSELECTIVE"}
    entries = [entry(logic) for logic in logics] + [unselective]
    one = _entries_seen(chat_api, openai_stub, entries, "Lucía es enfermera")
    assert sorted(one) == ["LORE-ANDANY", "LORE-NOTALL", "LORE-UNSELECTIVE"]
    both = _entries_seen(chat_api, openai_stub, entries, "Lucía es enfermera en Triana")
    assert sorted(both) == ["LORE-ANDALL", "LORE-ANDANY", "LORE-UNSELECTIVE"]
    none = _entries_seen(chat_api, openai_stub, entries, "Lucía vive sola")
    assert sorted(none) == ["LORE-NOTALL", "LORE-NOTANY", "LORE-UNSELECTIVE"]


def test_entries_take_their_place_and_order(chat_api: Api, openai_stub: OpenAIStub) -> None:
    entries = [
        {"keys": [], "constant": True, "insertion_order": 20, "content": "LORE-BEFORE2"},
        {"keys": [], "constant": True, "insertion_order": 10, "content": "LORE-BEFORE1"},
        {"keys": [], "constant": True, "position": "after_char", "content": "LORE-AFTER"},
        {"keys": [], "constant": True, "position": "at_depth", "depth": 0, "content": "LORE-D0"},
        {"keys": [], "constant": True, "position": "at_depth", "depth": 2, "content": "LORE-D2"},
    ]
    book = _book(chat_api, entries)
    instance = _instance(chat_api, book, said=("Hola, Rosa.", "¡Hola, mijo!"))
    body, messages = _turn(chat_api, openai_stub, instance, "¿Cómo estás?")

    system = messages[0]["content"]
    about = system.index("## About you")
    assert system.index("LORE-BEFORE1") < system.index("LORE-BEFORE2") < about
    assert about < system.index("LORE-AFTER")
    assert [(m["role"], _marks([m]) or m["content"]) for m in messages[1:]] == [
        ("user", "Hola, Rosa."),
        ("system", ["LORE-D2"]),
        ("assistant", "¡Hola, mijo!"),
        ("system", f"Today is {day(datetime.now(UTC))}."),
        ("user", "¿Cómo estás?"),
        ("system", ["LORE-D0"]),
    ]
    used = {u["entry_id"]: u for u in body["lore_used"]}
    assert sorted(used) == [0, 1, 2, 3, 4]
    assert {u["lorebook_id"] for u in used.values()} == {book["id"]}
    assert used[2]["position"] == "after_char"
    events = chat_api.client.get(
        f"/v1/instances/{instance}/events", params={"type": "ReplyRecorded"}, headers=chat_api.acme
    ).json()["items"]
    assert sorted(events[-1]["data"]["lore_used"]) == sorted(u["id"] for u in used.values())


def test_the_token_budget_keeps_the_highest_priority(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    filler = " ".join(["palabra"] * 30)
    texts = {p: f"LORE-{name} {filler}" for p, name in [(1, "LOW"), (9, "HIGH"), (5, "MID")]}
    entries = [
        {"keys": [], "constant": True, "priority": p, "content": t} for p, t in texts.items()
    ]
    budget = tokens.count(texts[9]) + tokens.count(texts[5]) + 2
    seen = _entries_seen(chat_api, openai_stub, entries, "Hola", token_budget=budget)
    assert sorted(seen) == ["LORE-HIGH", "LORE-MID"]


def test_scan_depth_reaches_back_that_many_messages(chat_api: Api, openai_stub: OpenAIStub) -> None:
    entries = [{"keys": ["Lucía"], "content": "LORE-SCANNED"}]
    said = ("Te hablé de Lucía.", "Sí, me acuerdo.", "Bueno.", "Pues eso.")
    shallow = _instance(chat_api, _book(chat_api, entries, scan_depth=2), said=said)
    deep = _instance(chat_api, _book(chat_api, entries, scan_depth=5), said=said)
    own = [{**entries[0], "scan_depth": 5}]
    entry_deep = _instance(chat_api, _book(chat_api, own, scan_depth=1), said=said)
    assert _marks(_turn(chat_api, openai_stub, shallow, "¿Y qué?")[1]) == []
    assert _marks(_turn(chat_api, openai_stub, deep, "¿Y qué?")[1]) == ["LORE-SCANNED"]
    assert _marks(_turn(chat_api, openai_stub, entry_deep, "¿Y qué?")[1]) == ["LORE-SCANNED"]


def test_recursive_scanning_lets_entries_call_up_others(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    entries = [
        {"keys": ["Lucía"], "content": "LORE-LUCIA trabaja en el hospital de Triana."},
        {"keys": ["Triana"], "content": "LORE-TRIANA es un barrio de Sevilla."},
        {"keys": ["Sevilla"], "exclude_recursion": True, "content": "LORE-EXCLUDED"},
    ]
    flat = _entries_seen(chat_api, openai_stub, entries, "¿Qué hace Lucía?")
    assert flat == ["LORE-LUCIA"]
    deep = _entries_seen(
        chat_api, openai_stub, entries, "¿Qué hace Lucía?", recursive_scanning=True
    )
    assert sorted(deep) == ["LORE-LUCIA", "LORE-TRIANA"]
    stopped = [{**entries[0], "prevent_recursion": True}, *entries[1:]]
    assert _entries_seen(
        chat_api, openai_stub, stopped, "¿Qué hace Lucía?", recursive_scanning=True
    ) == ["LORE-LUCIA"]


def test_a_characters_lorebooks_reach_every_instance_and_archived_ones_none(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    world = _book(chat_api, [{"keys": [], "constant": True, "content": "LORE-WORLD"}])
    own = _book(chat_api, [{"keys": [], "constant": True, "content": "LORE-OWN"}])
    character = make_character(chat_api)
    attached = chat_api.client.put(
        f"/v1/characters/{character['id']}/lorebooks",
        json={"lorebook_ids": [world["id"]]},
        headers=chat_api.acme,
    )
    assert attached.json() == {"lorebook_ids": [world["id"]]}
    instance = str(make_instance(chat_api, character["id"])["id"])
    chat_api.client.put(
        f"/v1/instances/{instance}/lorebooks",
        json={"lorebook_ids": [own["id"]]},
        headers=chat_api.acme,
    )
    assert sorted(_marks(_turn(chat_api, openai_stub, instance, "Hola")[1])) == [
        "LORE-OWN",
        "LORE-WORLD",
    ]

    gone = chat_api.client.delete(f"/v1/lorebooks/{world['id']}", headers=chat_api.acme)
    assert gone.status_code == 204
    assert _marks(_turn(chat_api, openai_stub, instance, "Hola")[1]) == ["LORE-OWN"]
    listed = chat_api.client.get(
        f"/v1/characters/{character['id']}/lorebooks", headers=chat_api.acme
    )
    assert listed.json() == {"lorebook_ids": []}


def test_a_lorebook_has_history_versions_and_events(api: Api) -> None:
    book = _book(api, [{"keys": ["Lucía"], "content": "Lucía es enfermera."}])
    url = f"/v1/lorebooks/{book['id']}"
    added = api.client.post(
        f"{url}/entries", json={"keys": ["Tizón"], "content": "Tizón es un gato."}, headers=api.acme
    )
    assert added.status_code == 201, added.text
    assert added.json()["entry"]["id"] == 1
    edited = api.client.patch(
        f"{url}/entries/0",
        json={"content": "Lucía es médica.", "position": "after_char"},
        headers=api.acme,
    )
    assert edited.json()["entry"]["content"] == "Lucía es médica."
    assert api.client.delete(f"{url}/entries/1", headers=api.acme).status_code == 204
    renamed = api.client.patch(url, json={"name": "El mundo"}, headers=api.acme)
    assert renamed.json()["version"] == 5

    first = api.client.get(url, params={"version": 1}, headers=api.acme).json()
    assert first["name"] == "La sierra"
    assert [e["content"] for e in first["entries"]] == ["Lucía es enfermera."]
    second = api.client.get(url, params={"version": 2}, headers=api.acme).json()
    assert [e["content"] for e in second["entries"]] == ["Lucía es enfermera.", "Tizón es un gato."]
    now = api.client.get(url, headers=api.acme).json()
    assert now["name"] == "El mundo"
    assert [(e["content"], e["position"]) for e in now["entries"]] == [
        ("Lucía es médica.", "after_char")
    ]
    events = api.client.get(f"{url}/events", headers=api.acme).json()["items"]
    assert [e["type"] for e in events] == [
        "Created",
        "EntryAdded",
        "EntryChanged",
        "EntryRemoved",
        "Changed",
    ]
    listed = api.client.get("/v1/lorebooks", params={"q": "mundo"}, headers=api.acme)
    assert [b["id"] for b in listed.json()["items"]] == [book["id"]]


def test_another_tenants_lorebook_is_never_seen_listed_or_attached(api: Api) -> None:
    book = _book(api, [{"keys": [], "constant": True, "content": "secreto"}])
    url = f"/v1/lorebooks/{book['id']}"
    rival_character = api.client.post(
        "/v1/characters", json={"name": "Otra", "description": "x"}, headers=api.rival
    ).json()
    written = api.written()
    assert api.client.get(url, headers=api.rival).status_code == 404
    assert api.client.get(f"{url}/export", headers=api.rival).status_code == 404
    assert api.client.get(f"{url}/events", headers=api.rival).status_code == 404
    assert api.client.patch(url, json={"name": "x"}, headers=api.rival).status_code == 404
    assert api.client.delete(url, headers=api.rival).status_code == 404
    entry = api.client.post(f"{url}/entries", json={"content": "x"}, headers=api.rival)
    assert entry.status_code == 404
    attach = api.client.put(
        f"/v1/characters/{rival_character['id']}/lorebooks",
        json={"lorebook_ids": [book["id"]]},
        headers=api.rival,
    )
    assert attach.status_code == 404
    listed = api.client.get("/v1/lorebooks", headers=api.rival).json()
    assert listed["items"] == []
    assert api.written() == written


def test_bad_lorebooks_are_refused_and_write_nothing(api: Api) -> None:
    written = api.written()
    cases = [
        ({"keys": ["/(a+)+$/"], "content": "x"}, "catastrophic"),
        ({"keys": ["/(a+/"], "content": "x"}, "invalid regular expression"),
        ({"keys": ["/a/q"], "content": "x"}, "flag 'q'"),
        ({"keys": ["x"], "content": "x", "selective_logic": "sometimes"}, "selective_logic"),
        ({"keys": ["x"], "content": "x", "position": "anywhere"}, "position"),
        ({"keys": ["x"], "content": "x", "depth": -1}, "depth"),
        ({"keys": ["x"]}, "content"),
    ]
    for entry, said in cases:
        response = api.client.post(
            "/v1/lorebooks", json={"name": "Mal", "entries": [entry]}, headers=api.acme
        )
        assert response.status_code == 422, (entry, response.text)
        assert said in response.json()["error"]["message"], response.text
    repeated = [{"id": 3, "content": "a"}, {"id": 3, "content": "b"}]
    response = api.client.post(
        "/v1/lorebooks", json={"name": "Mal", "entries": repeated}, headers=api.acme
    )
    assert response.status_code == 422
    assert "repeated" in response.json()["error"]["message"]
    assert api.written() == written


def test_a_fork_keeps_the_lorebooks_and_the_lore_its_replies_used(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    book = _book(chat_api, [{"keys": ["Lucía"], "content": "LORE-SISTER"}])
    instance = _instance(chat_api, book)
    body, _ = _turn(chat_api, openai_stub, instance, "¿Y Lucía?")
    [used] = body["lore_used"]

    forked = chat_api.client.post(
        f"/v1/instances/{instance}/fork", json={"name": "Rosa bis"}, headers=chat_api.acme
    )

    assert forked.status_code == 201, forked.text
    fork = forked.json()["id"]
    attached = chat_api.client.get(f"/v1/instances/{fork}/lorebooks", headers=chat_api.acme)
    assert attached.json() == {"lorebook_ids": [book["id"]]}
    replies = chat_api.client.get(
        f"/v1/instances/{fork}/events", params={"type": "ReplyRecorded"}, headers=chat_api.acme
    ).json()["items"]
    assert [r["data"]["lore_used"] for r in replies] == [[used["id"]]]
    assert _marks(_turn(chat_api, openai_stub, fork, "Lucía otra vez")[1]) == ["LORE-SISTER"]


def test_lorebooks_travel_with_their_tenant(services: Services, tmp_path: Path) -> None:
    actor = Actor("acme", "test", "transfer")
    app = services.app
    book = app.create_lorebook(
        "acme", {"name": "Sierra"}, [{"keys": ["/herman[ao]/i"], "content": "Lucía"}], actor
    )
    app.add_lorebook_entry("acme", book.id, {"keys": ["Tizón"], "content": "El gato"}, actor)
    character = app.create_character("acme", {"name": "Rosa", "description": ""}, actor)
    app.attach_lorebooks("acme", Character, character.id, [book.id], actor)
    exported = io.StringIO()
    export_tenant(app, "acme", exported)

    target = build_services(Settings(data_dir=tmp_path / "target", _env_file=None))  # type: ignore[call-arg]
    try:
        import_events(target.app, read_events(target.app, exported.getvalue().splitlines()))
        moved = target.app.lorebook("acme", book.id)
        assert (moved.settings, moved.entries) == (
            book.settings,
            app.lorebook("acme", book.id).entries,
        )
        assert target.app.attached_lorebooks("acme", Character, character.id) == [book.id]
    finally:
        target.close()


def test_an_erased_lorebook_leaves_no_text_and_activates_nowhere(
    chat_api: Api, openai_stub: OpenAIStub, settings: Settings
) -> None:
    secret, name = marker("lore"), marker("book")
    book = _book(
        chat_api, [{"keys": [], "constant": True, "content": f"LORE-ERASED {secret}"}], name=name
    )
    instance = _instance(chat_api, book)
    assert _marks(_turn(chat_api, openai_stub, instance, "Hola")[1]) == ["LORE-ERASED"]
    caught_up(chat_api)
    assert leftovers(settings, [name])  # the check can see: the listing holds its name

    erase(chat_api, "lorebooks", book["id"])

    assert leftovers(settings, [secret, name]) == {}
    assert (
        chat_api.client.get(f"/v1/lorebooks/{book['id']}", headers=chat_api.acme).status_code == 404
    )
    assert _marks(_turn(chat_api, openai_stub, instance, "Hola")[1]) == []


def test_the_openai_compatible_route_activates_lore_too(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    book = _book(chat_api, [{"keys": ["mezcal"], "content": "LORE-MEZCAL"}])
    instance = _instance(chat_api, book)
    body = {"model": instance, "messages": [{"role": "user", "content": "¿Un mezcal?"}]}

    response = chat_api.client.post("/v1/chat/completions", json=body, headers=chat_api.acme)

    assert response.status_code == 200, response.text
    assert response.json()["alma"]["lore_used"] == [f"{book['id']}:0"]
    assert _marks(openai_stub.requests[-1]["messages"]) == ["LORE-MEZCAL"]


WORLD = {
    "dragon": "Smaug, a great red wyrm, sleeps in the Lonely Mountain on the dwarves' gold.",
    "guild": "The Guild of Thieves meets at night in the sewers under the old market.",
    "captain": "Captain Elena Vargas commands the harbour guard and distrusts foreigners.",
}


def test_a_vectorized_entry_is_called_up_by_meaning_without_its_words(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    entries = [
        {"keys": ["Smaug"], "vectorized": True, "content": WORLD["dragon"]},
        {"keys": ["Guild"], "vectorized": True, "content": WORLD["guild"]},
        {"keys": ["Vargas"], "content": WORLD["captain"]},  # called up by its key alone
    ]
    book = _book(chat_api, entries)
    strict = _book(chat_api, entries, min_score=0.95)

    def called_up(message: str, lorebook: dict[str, Any] = book) -> list[str]:
        answer, messages = _turn(chat_api, openai_stub, _instance(chat_api, lorebook), message)
        prompt = "\n".join(m["content"] for m in messages)
        seen = [name for name, text in WORLD.items() if text in prompt]
        used = sorted(entries[e["entry_id"]]["content"] for e in answer["lore_used"])
        assert used == sorted(WORLD[name] for name in seen)  # what the turn records it used
        return seen

    assert called_up("Is there a dragon living up on the mountain?") == ["dragon"]
    assert called_up("Where do the burglars gather?") == ["guild"]
    assert called_up("Who is in charge of the port's soldiers?") == []  # not vectorized
    assert called_up("Tell me a joke.") == []
    assert called_up("Is there a dragon living up on the mountain?", strict) == []
    assert called_up("Have you seen Vargas or Smaug?", strict) == ["dragon", "captain"]


@hypothesis.given(
    needles=st.frozensets(st.text(alphabet="abñ. (", min_size=1, max_size=6), max_size=30),
    haystack=st.text(alphabet="abñ. (\n", max_size=80),
)
def test_keys_are_found_in_one_pass_exactly_where_they_occur(
    needles: frozenset[str], haystack: str
) -> None:
    assert present(needles, haystack) == {n for n in needles if n in haystack}
