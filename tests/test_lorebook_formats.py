"""Lorebooks in and out in the ecosystem's formats: SillyTavern's world-info JSON (its current and
older field sets) and the cards' `character_book`, every field alma does not use kept."""

from __future__ import annotations

import copy
from typing import Any

from tests.conftest import Api


def _st_entry(uid: int, **fields: Any) -> dict[str, Any]:
    """An entry as SillyTavern writes it today (`newWorldInfoEntryDefinition`)."""
    return {
        "uid": uid,
        "key": ["Lucía"],
        "keysecondary": [],
        "comment": "",
        "content": "Lucía es enfermera.",
        "constant": False,
        "vectorized": False,
        "selective": True,
        "selectiveLogic": 0,
        "addMemo": False,
        "order": 100,
        "position": 0,
        "disable": False,
        "excludeRecursion": False,
        "preventRecursion": False,
        "delayUntilRecursion": 0,
        "probability": 100,
        "useProbability": True,
        "depth": 4,
        "group": "",
        "groupOverride": False,
        "groupWeight": 100,
        "scanDepth": None,
        "caseSensitive": None,
        "matchWholeWords": None,
        "useGroupScoring": None,
        "automationId": "",
        "role": 0,
        "sticky": None,
        "cooldown": None,
        "delay": None,
        "displayIndex": uid,
        **fields,
    }


WORLD_INFO = {
    "entries": {
        "0": _st_entry(0),
        "1": _st_entry(
            1,
            key=["/herman[ao]s?/i"],
            keysecondary=["Triana", "Sevilla"],
            selectiveLogic=3,
            position=4,
            depth=2,
            order=7,
            disable=True,
            caseSensitive=True,
            matchWholeWords=True,
            scanDepth=6,
            excludeRecursion=True,
            preventRecursion=True,
            comment="hermanos",
            futureField={"kept": ["as", "is"]},
        ),
        "2": _st_entry(2, position=2, selectiveLogic=1, constant=True, key=[]),
    },
    "originalData": {"name": "La sierra"},
}

# What SillyTavern's versions before selectiveLogic, depth and the recursion options wrote.
OLD_WORLD_INFO = {
    "entries": {
        "0": {
            "uid": 0,
            "key": ["Tizón", "gato"],
            "keysecondary": [],
            "comment": "el gato",
            "content": "Tizón es el gato negro de Rosa.",
            "constant": False,
            "selective": False,
            "order": 100,
            "position": 1,
            "disable": False,
            "addMemo": True,
            "excludeRecursion": False,
            "displayIndex": 0,
        }
    }
}

# A card's book as the V2 spec writes it, with an extension of another front-end.
CHARACTER_BOOK = {
    "name": "El mundo de Rosa",
    "description": "Lo que Rosa sabe",
    "scan_depth": 3,
    "token_budget": 500,
    "recursive_scanning": True,
    "extensions": {"risu": {"fullWordMatching": True}},
    "entries": [
        {
            "keys": ["Lucía"],
            "content": "Lucía es enfermera.",
            "extensions": {},
            "enabled": True,
            "insertion_order": 10,
            "case_sensitive": False,
            "name": "Lucía",
            "priority": 5,
            "id": 1,
            "comment": "la hermana",
            "selective": True,
            "secondary_keys": ["Triana"],
            "constant": False,
            "position": "after_char",
        },
        {
            # As SillyTavern exports an entry of a world into a card.
            "id": 2,
            "keys": ["/gat[oa]/i"],
            "secondary_keys": [],
            "comment": "",
            "content": "Tizón es el gato.",
            "constant": False,
            "selective": True,
            "insertion_order": 100,
            "enabled": True,
            "position": "after_char",
            "use_regex": True,
            "extensions": {
                "position": 4,
                "exclude_recursion": False,
                "display_index": 1,
                "probability": 100,
                "useProbability": True,
                "depth": 1,
                "selectiveLogic": 2,
                "group": "",
                "group_override": False,
                "group_weight": 100,
                "prevent_recursion": True,
                "delay_until_recursion": False,
                "scan_depth": None,
                "match_whole_words": True,
                "use_group_scoring": False,
                "case_sensitive": None,
                "automation_id": "",
                "role": 0,
                "vectorized": False,
                "sticky": None,
                "cooldown": None,
                "delay": None,
            },
        },
    ],
}


def _import(api: Api, data: dict[str, Any], **params: str) -> dict[str, Any]:
    response = api.client.post("/v1/lorebooks/import", json=data, params=params, headers=api.acme)
    assert response.status_code == 201, response.text
    book: dict[str, Any] = response.json()
    return book


def _export(api: Api, book: dict[str, Any], format: str) -> dict[str, Any]:
    response = api.client.get(
        f"/v1/lorebooks/{book['id']}/export", params={"format": format}, headers=api.acme
    )
    assert response.status_code == 200, response.text
    exported: dict[str, Any] = response.json()
    return exported


def _same_book(first: dict[str, Any], second: dict[str, Any]) -> None:
    unlike = {"id", "version", "created_at", "updated_at"}
    assert {k: v for k, v in first.items() if k not in unlike} == {
        k: v for k, v in second.items() if k not in unlike
    }


def _holds(exported: Any, original: Any, where: str = "") -> None:
    """Every field of `original` is in `exported` with its value."""
    if isinstance(original, dict):
        for key, value in original.items():
            assert key in exported, f"{where}.{key} was lost"
            _holds(exported[key], value, f"{where}.{key}")
    elif isinstance(original, list) and original and isinstance(original[0], dict):
        assert len(exported) == len(original), where
        for n, (out, given) in enumerate(zip(exported, original, strict=True)):
            _holds(out, given, f"{where}[{n}]")
    else:
        assert exported == original, where


def test_sillytavern_world_info_comes_in_with_its_meaning_and_goes_out_as_it_was(
    shared_api: Api,
) -> None:
    book = _import(shared_api, copy.deepcopy(WORLD_INFO), name="sierra")
    assert book["name"] == "sierra"
    plain, regex, outlet = book["entries"]
    assert (plain["keys"], plain["position"], plain["selective_logic"]) == (
        ["Lucía"],
        "before_char",
        "and_any",
    )
    assert regex == {
        **regex,
        "keys": ["/herman[ao]s?/i"],
        "secondary_keys": ["Triana", "Sevilla"],
        "selective_logic": "and_all",
        "position": "at_depth",
        "depth": 2,
        "insertion_order": 7,
        "enabled": False,
        "case_sensitive": True,
        "match_whole_words": True,
        "scan_depth": 6,
        "exclude_recursion": True,
        "prevent_recursion": True,
        "comment": "hermanos",
    }
    assert regex["extra"]["futureField"] == {"kept": ["as", "is"]}
    assert regex["extra"]["probability"] == 100
    assert (outlet["constant"], outlet["selective_logic"]) == (True, "not_all")
    assert outlet["position"] == "before_char"  # the author's note: kept, placed before

    exported = _export(shared_api, book, "sillytavern")
    assert exported["entries"] == WORLD_INFO["entries"]
    assert exported["originalData"] == WORLD_INFO["originalData"]
    _same_book(_import(shared_api, exported), book)


def test_an_older_world_info_file_takes_the_defaults_and_loses_nothing(shared_api: Api) -> None:
    book = _import(shared_api, copy.deepcopy(OLD_WORLD_INFO), name="gato")
    [entry] = book["entries"]
    assert entry["keys"] == ["Tizón", "gato"]
    assert (entry["position"], entry["selective_logic"], entry["depth"]) == (
        "after_char",
        "and_any",
        4,
    )
    assert entry["selective"] is False
    assert entry["extra"] == {"addMemo": True, "displayIndex": 0}

    exported = _export(shared_api, book, "sillytavern")
    _holds(exported, OLD_WORLD_INFO)
    _same_book(_import(shared_api, exported), book)


def test_a_character_book_comes_in_and_goes_out_as_it_was(shared_api: Api) -> None:
    book = _import(shared_api, copy.deepcopy(CHARACTER_BOOK))
    assert (book["name"], book["scan_depth"], book["token_budget"]) == ("El mundo de Rosa", 3, 500)
    assert book["recursive_scanning"] is True
    assert book["extensions"] == {"risu": {"fullWordMatching": True}}
    sister, cat = book["entries"]
    assert (sister["id"], sister["priority"], sister["position"]) == (1, 5, "after_char")
    assert sister["extra"] == {"name": "Lucía"}
    assert (cat["position"], cat["depth"], cat["selective_logic"]) == ("at_depth", 1, "not_any")
    assert (cat["prevent_recursion"], cat["match_whole_words"]) == (True, True)
    assert cat["extra"] == {"use_regex": True}
    assert cat["extensions"]["display_index"] == 1

    exported = _export(shared_api, book, "character_book")
    _holds(exported, CHARACTER_BOOK)
    assert exported["entries"][1] == CHARACTER_BOOK["entries"][1]
    _same_book(_import(shared_api, exported), book)


def test_a_book_crosses_from_one_format_to_the_other(shared_api: Api) -> None:
    book = _import(shared_api, copy.deepcopy(WORLD_INFO), name="sierra")
    as_card = _export(shared_api, book, "character_book")
    again = _import(shared_api, as_card)
    fields = ("keys", "secondary_keys", "selective_logic", "position", "depth", "enabled")
    assert [{f: e[f] for f in fields} for e in again["entries"]] == [
        {f: e[f] for f in fields} for e in book["entries"]
    ]


def test_a_bad_lorebook_file_is_refused_and_writes_nothing(shared_api: Api) -> None:
    written = shared_api.written()
    cases = [
        ({"name": "no entries"}, "entries"),
        ({"entries": "0"}, "entries"),
        ({"entries": {"0": "not an entry"}}, "entries['0']"),
        ({"entries": {"0": _st_entry(0, selectiveLogic=9)}}, "selectiveLogic"),
        ({"entries": {"0": _st_entry(0, key=["/(x+x+)+y/"])}}, "catastrophic"),
        ({"entries": {"0": _st_entry(0, position="top")}}, "position"),
        ({"entries": {"0": _st_entry(0, disable="no")}}, "disable"),
        ({"entries": [{"keys": ["a"], "content": "b", "extensions": []}]}, "extensions"),
        ({"entries": [{"keys": ["a"], "content": "b", "position": "middle"}]}, "position"),
    ]
    for body, said in cases:
        response = shared_api.client.post(
            "/v1/lorebooks/import", json=body, headers=shared_api.acme
        )
        assert response.status_code == 422, (body, response.text)
        assert said in response.json()["error"]["message"], response.text
    assert shared_api.written() == written


def test_a_card_book_from_the_wild_keeps_what_alma_cannot_use(shared_api: Api) -> None:
    messy = {
        "entries": [
            {"keys": [""], "content": "LORE-EMPTY", "id": "a1b2", "key_logic": "AND"},
            {"keys": ["Rosa"], "content": "Rosa", "entry_id": 7, "extensions": {"x": None}},
        ]
    }
    book = _import(shared_api, copy.deepcopy(messy))
    empty, rosa = book["entries"]
    assert empty["extra"] == {"id": "a1b2", "key_logic": "AND"}
    assert (rosa["extra"], rosa["extensions"]) == ({"entry_id": 7}, {"x": None})
    exported = _export(shared_api, book, "character_book")
    _holds(exported, messy)
    _same_book(_import(shared_api, exported), book)
