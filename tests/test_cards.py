"""Character Cards in and out: V1, V2 and V3 JSON, PNG cards (each chunk, as front-ends write
them), CHARX; lossless round trips; the card's macros, system prompt and post-history
instructions in the prompt the model sees; the greeting; every bad card refused, nothing written.

Every card here is built by the test (no third-party cards in the repository); the PNGs with
zlib and struct, as the format's specification lays them out.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import struct
import threading
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from alma.chat.macros import fill
from alma.domain import Actor
from alma.domain.errors import AlreadyStarted
from tests.conftest import Api, make_instance
from tests.openai_stub import OpenAIStub

# What a character's answer holds that no card does: who and when.
_OWN = ("id", "version", "created_at", "updated_at")


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def text_chunk(keyword: str, card: dict[str, Any]) -> bytes:
    encoded = base64.b64encode(json.dumps(card).encode("utf-8"))
    return chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + encoded)


def png(*texts: bytes, pixels: bytes = b"\0\xff\x00\x00\xff") -> bytes:
    """A 1-pixel-wide PNG whose image data is `pixels` (filter byte + RGBA rows, deflated),
    with the given text chunks before its end."""
    height = len(pixels) // 5
    header = struct.pack(">IIBBBBB", 1, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(pixels, 0))
        + b"".join(texts)
        + chunk(b"IEND", b"")
    )


def image_data(content: bytes) -> bytes:
    """The image itself (IHDR and IDAT chunks), whatever text chunks surround it."""
    at, kept = 8, b""
    while at < len(content):
        (length,) = struct.unpack(">I", content[at : at + 4])
        kind = content[at + 4 : at + 8]
        if kind in (b"IHDR", b"IDAT"):
            kept += content[at : at + 12 + length]
        at += 12 + length
    return kept


def texts_of(content: bytes) -> dict[str, dict[str, Any]]:
    """The cards in a PNG's tEXt chunks, by keyword."""
    at, found = 8, {}
    while at < len(content):
        (length,) = struct.unpack(">I", content[at : at + 4])
        if content[at + 4 : at + 8] == b"tEXt":
            keyword, _, text = content[at + 8 : at + 8 + length].partition(b"\0")
            found[keyword.decode("latin-1")] = json.loads(base64.b64decode(text))
        at += 12 + length
    return found


def v2_card(**data: Any) -> dict[str, Any]:
    return {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": "Seraphina",
            "description": "{{char}} is a guardian of the forest glade.",
            "personality": "warm, protective",
            "scenario": "{{user}} wakes up in {{char}}'s glade.",
            "first_mes": "*{{char}} smiles at {{user}}.* You are safe here.",
            "mes_example": "<START>\n{{user}}: Who are you?\n{{char}}: A friend.",
            "creator_notes": "Best with a long context.",
            "system_prompt": "",
            "post_history_instructions": "",
            "alternate_greetings": ["*{{char}} hums.*", "Welcome back, {{user}}."],
            "tags": ["fantasy", "guardian"],
            "creator": "someone",
            "character_version": "1.2",
            "extensions": {"talkativeness": "0.5", "depth_prompt": {"prompt": "x", "depth": 4}},
            "character_book": {
                "name": "Glade lore",
                "entries": [{"keys": ["glade"], "content": "The glade heals.", "extensions": {}}],
                "extensions": {},
            },
            **data,
        },
    }


def v3_card(**data: Any) -> dict[str, Any]:
    card = v2_card(**data)
    card["spec"], card["spec_version"] = "chara_card_v3", "3.0"
    card["data"] |= {
        "nickname": "Sera",
        "group_only_greetings": ["Hello, everyone."],
        "creation_date": 1_700_000_000,
        "modification_date": 1_700_000_500,
        "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
        "source": ["https://example.org/seraphina"],
        **data,
    }
    return card


def imported(api: Api, content: bytes, media: str = "application/json") -> dict[str, Any]:
    response = api.client.post(
        "/v1/characters/import",
        content=content,
        headers={**api.acme, "Content-Type": media},
    )
    assert response.status_code == 201, response.text
    character: dict[str, Any] = response.json()
    return character


def uploaded(api: Api, content: bytes, filename: str) -> dict[str, Any]:
    response = api.client.post(
        "/v1/characters/import", files={"file": (filename, content)}, headers=api.acme
    )
    assert response.status_code == 201, response.text
    character: dict[str, Any] = response.json()
    return character


def exported(api: Api, character_id: str, card_format: str) -> bytes:
    response = api.client.get(
        f"/v1/characters/{character_id}/export", params={"format": card_format}, headers=api.acme
    )
    assert response.status_code == 200, response.text
    return response.content


def fields(character: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in character.items() if k not in _OWN}


def test_a_v2_card_maps_onto_the_character_and_keeps_everything_else(shared_api: Api) -> None:
    card = v2_card(future_field={"kept": True})
    card["creatorcomment"] = "an old SillyTavern field"
    character = imported(shared_api, json.dumps(card).encode())

    assert character["name"] == "Seraphina"
    assert character["greeting"] == card["data"]["first_mes"]
    assert character["example_dialogue"] == card["data"]["mes_example"]
    assert character["alternate_greetings"] == card["data"]["alternate_greetings"]
    assert character["tags"] == ["fantasy", "guardian"]
    assert character["creator_notes"] == "Best with a long context."
    assert (character["creator"], character["character_version"]) == ("someone", "1.2")
    extras = character["card_extras"]
    assert extras["data"]["extensions"] == card["data"]["extensions"]
    assert "character_book" not in extras["data"]  # a lorebook of its own: see below
    assert extras["data"]["future_field"] == {"kept": True}
    assert extras["card"] == {"creatorcomment": "an old SillyTavern field"}

    # As events like every other change: the first version is the card as imported.
    at_first = shared_api.client.get(
        f"/v1/characters/{character['id']}", params={"version": 1}, headers=shared_api.acme
    )
    assert fields(at_first.json()) == fields(character)


def test_a_v1_card_with_missing_fields_imports_as_front_ends_take_it(shared_api: Api) -> None:
    card = {
        "name": "Old Tom",
        "description": "A sailor.",
        "first_mes": "Ahoy, {{User}}!",
        "tags": "sea, old , ",
        "talkativeness": "0.7",
    }
    character = imported(shared_api, json.dumps(card).encode())

    assert character["scenario"] == "" and character["personality"] == ""
    assert character["greeting"] == "Ahoy, {{User}}!"
    assert character["tags"] == ["sea", "old"]
    assert character["card_extras"] == {"card": {"talkativeness": "0.7"}}
    out = json.loads(exported(shared_api, character["id"], "v2"))
    assert out["spec"] == "chara_card_v2"
    assert out["talkativeness"] == "0.7" and out["name"] == "Old Tom"
    assert out["data"]["first_mes"] == "Ahoy, {{User}}!" and out["data"]["extensions"] == {}


def test_a_v3_card_uploaded_as_a_file_keeps_its_v3_fields_times_in_seconds(
    shared_api: Api,
) -> None:
    card = v3_card(creation_date=1_700_000_000_000)  # milliseconds, as some front-ends write
    character = uploaded(shared_api, json.dumps(card).encode(), "seraphina.json")

    assert character["nickname"] == "Sera"
    data = character["card_extras"]["data"]
    assert data["creation_date"] == 1_700_000_000
    assert data["group_only_greetings"] == ["Hello, everyone."]
    out = json.loads(exported(shared_api, character["id"], "v3"))
    assert (out["spec"], out["spec_version"]) == ("chara_card_v3", "3.0")
    assert out["data"]["nickname"] == "Sera" and out["data"]["assets"] == card["data"]["assets"]


@pytest.mark.parametrize(
    ("chunks", "name"),
    [
        ([("chara", v2_card(name="Only V2"))], "Only V2"),
        ([("ccv3", v3_card(name="Only V3"))], "Only V3"),
        ([("chara", v3_card(name="V3 in chara"))], "V3 in chara"),
        ([("chara", v2_card(name="Stale")), ("ccv3", v3_card(name="Fresh"))], "Fresh"),
        ([("ccv3", v3_card(name="First")), ("chara", v2_card(name="Second"))], "First"),
        ([("chara", {**v2_card(name=""), "name": "Top level"})], "Top level"),
    ],
    ids=["chara", "ccv3", "v3-in-chara", "both", "ccv3-first-differing", "name-at-top"],
)
def test_a_png_card_is_read_from_its_chunks_and_ccv3_wins(
    shared_api: Api, chunks: list[tuple[str, dict[str, Any]]], name: str
) -> None:
    content = png(*(text_chunk(keyword, card) for keyword, card in chunks))
    character = uploaded(shared_api, content, "card.png")
    assert character["name"] == name
    assert character["image"] is not None


def compressed_chunk(kind: bytes, keyword: str, text: bytes) -> bytes:
    """A `zTXt` or a compressed `iTXt` chunk, as some image tools rewrite a card's `tEXt`."""
    if kind == b"zTXt":
        return chunk(kind, keyword.encode("latin-1") + b"\0\0" + zlib.compress(text))
    # compressed, zlib, a language tag, a translated keyword
    header = keyword.encode("latin-1") + b"\0\1\0es\0chara\0"
    return chunk(kind, header + zlib.compress(text))


@pytest.mark.parametrize("kind", [b"zTXt", b"iTXt"])
def test_a_png_card_rewritten_into_compressed_text_chunks_is_read(
    shared_api: Api, kind: bytes
) -> None:
    encoded = base64.b64encode(json.dumps(v3_card(name="Comprimida")).encode())
    content = png(compressed_chunk(kind, "ccv3", encoded))

    character = uploaded(shared_api, content, "card.png")

    assert character["name"] == "Comprimida"
    assert image_data(exported(shared_api, character["id"], "png")) == image_data(content)


def test_a_png_card_of_several_megabytes_comes_back_with_its_image_and_both_chunks(
    shared_api: Api,
) -> None:
    pixels = b"".join(b"\0" + os.urandom(4) for _ in range(600_000))  # ~3 MB, incompressible
    content = png(text_chunk("chara", v2_card()), pixels=pixels)
    assert len(content) > 2 * 1024 * 1024
    character = imported(shared_api, content, "image/png")

    out = exported(shared_api, character["id"], "png")
    assert image_data(out) == image_data(content)
    cards = texts_of(out)
    assert cards["chara"]["spec"] == "chara_card_v2" and cards["ccv3"]["spec"] == "chara_card_v3"
    assert cards["chara"]["data"]["name"] == cards["ccv3"]["data"]["name"] == "Seraphina"


def test_a_charx_brings_its_card_and_its_icon(shared_api: Api) -> None:
    icon = png(pixels=b"\0\x01\x02\x03\x04")
    card = v3_card(assets=[{"type": "icon", "uri": "embeded://assets/icon/main.png"}])
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as charx:
        charx.writestr("card.json", json.dumps(card))
        charx.writestr("assets/icon/main.png", icon)
    character = uploaded(shared_api, archive.getvalue(), "seraphina.charx")

    assert character["name"] == "Seraphina"
    assert image_data(exported(shared_api, character["id"], "png")) == image_data(icon)


def charx(card: dict[str, Any], files: dict[str, bytes]) -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("card.json", json.dumps(card))
        for path, content in files.items():
            zipped.writestr(path, content)
    return archive.getvalue()


def unzipped(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_a_charx_keeps_every_file_it_brings_and_gives_them_back(shared_api: Api) -> None:
    icon = png(pixels=b"\0\x01\x02\x03\x04")
    files = {
        "assets/icon/images/main.png": icon,
        "assets/background/images/glade.png": png(pixels=b"\0\x09\x08\x07\x06"),
        "assets/emotion/images/joy.webp": b"RIFF\x00\x00\x00\x00WEBPVP8 " + os.urandom(64),
        "module.risum": os.urandom(200),
    }
    listed = [
        {
            "type": "icon",
            "uri": "embeded://assets/icon/images/main.png",
            "name": "main",
            "ext": "png",
        },
        {
            "type": "background",
            "uri": "embeded://assets/background/images/glade.png",
            "name": "glade",
            "ext": "png",
        },
        {
            "type": "emotion",
            "uri": "embeded://assets/emotion/images/joy.webp",
            "name": "joy",
            "ext": "webp",
        },
    ]
    first = uploaded(shared_api, charx(v3_card(assets=listed), files), "seraphina.charx")
    assert sorted(first["assets"]) == sorted(set(files) - {"assets/icon/images/main.png"})

    out = exported(shared_api, first["id"], "charx")

    given_back = unzipped(out)
    assert json.loads(given_back.pop("card.json"))["data"]["assets"] == listed
    assert given_back == files
    second = uploaded(shared_api, out, "again.charx")
    assert fields(second) == fields(first)


@pytest.mark.parametrize("path", ["../../outside.png", "/etc/passwd", "assets/../../x", "a\\b"])
def test_a_charx_with_a_path_that_escapes_its_folder_is_refused(shared_api: Api, path: str) -> None:
    before = shared_api.written()
    content = charx(v3_card(), {path: b"x"})
    response = shared_api.client.post(
        "/v1/characters/import", files={"file": ("evil.charx", content)}, headers=shared_api.acme
    )
    assert response.status_code == 422, response.text
    assert "not a plain relative path" in response.json()["error"]["message"]
    assert shared_api.written() == before


@pytest.mark.parametrize("card_format", ["v2", "v3", "png", "charx"])
def test_import_export_import_is_lossless(shared_api: Api, card_format: str) -> None:
    card = v3_card(future_field=[1, {"two": None}], system_prompt="{{original}} Be brief.")
    card["top_level_extra"] = {"x": 1}
    first = imported(shared_api, png(text_chunk("ccv3", card)), "image/png")

    second = uploaded(shared_api, exported(shared_api, first["id"], card_format), "card")
    if card_format in ("v2", "v3"):  # a JSON card has no image
        assert second["image"] is None
        second["image"] = first["image"]
    assert fields(second) == fields(first)
    # Another tenant's character is not there to export.
    refused = shared_api.client.get(
        f"/v1/characters/{first['id']}/export", headers=shared_api.rival
    )
    assert refused.status_code == 404


def test_an_edit_shows_in_the_export(shared_api: Api) -> None:
    character = imported(shared_api, json.dumps(v2_card()).encode())
    edited = shared_api.client.patch(
        f"/v1/characters/{character['id']}",
        json={"tags": ["edited"], "card_extras": {"data": {"extensions": {"fav": True}}}},
        headers=shared_api.acme,
    )
    assert edited.status_code == 200, edited.text
    out = json.loads(exported(shared_api, character["id"], "v2"))
    assert out["data"]["tags"] == ["edited"]
    assert out["data"]["extensions"]["fav"] is True
    assert out["data"]["extensions"]["talkativeness"] == "0.5"  # merged, not replaced
    before = shared_api.client.get(
        f"/v1/characters/{character['id']}/export", params={"version": 1}, headers=shared_api.acme
    )
    assert json.loads(before.content)["data"]["tags"] == ["fantasy", "guardian"]


def _bomb() -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as charx:
        charx.writestr("card.json", b" " * (64 * 1024 * 1024))
    return archive.getvalue()


def _charx_without_card() -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as charx:
        charx.writestr("assets/icon/main.png", png())
    return archive.getvalue()


def _corrupt() -> bytes:
    content = bytearray(png(text_chunk("chara", v2_card())))
    content[-30] ^= 0xFF  # inside the tEXt chunk: its CRC no longer matches
    return bytes(content)


@pytest.mark.parametrize(
    ("content", "status", "says"),
    [
        (png(), 422, "holds no card"),
        (_corrupt(), 422, "corrupt"),
        (png(chunk(b"tEXt", b"chara\0" + base64.b64encode(b"not json"))), 422, "not JSON"),
        (json.dumps({"spec": "chara_card_v9", "data": {}}).encode(), 422, "unknown card spec"),
        (json.dumps({"spec": "chara_card_v2", "data": []}).encode(), 422, "`data` object"),
        (json.dumps({"description": "no name"}).encode(), 422, "has no name"),
        (_charx_without_card(), 422, "no card.json"),
        (_bomb(), 422, "inflates past"),
        (png(compressed_chunk(b"zTXt", "chara", b" " * (64 * 1024 * 1024))), 422, "inflates past"),
        (png(chunk(b"zTXt", b"chara\0\0not zlib")), 422, "does not inflate"),
        (b"GIF89a", 422, "not a card"),
        (png(text_chunk("chara", v2_card(alternate_greetings=[3]))), 422, "list of strings"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * (11 * 1024 * 1024), 413, "larger than"),
    ],
    ids=[
        "png-without-card",
        "corrupt-chunk",
        "base64-not-json",
        "wrong-spec",
        "v2-without-data",
        "no-name",
        "charx-without-card",
        "zip-bomb",
        "ztxt-bomb",
        "ztxt-not-zlib",
        "not-a-card",
        "wrong-type",
        "over-the-limit",
    ],
)
def test_a_bad_card_is_refused_saying_why_and_nothing_is_written(
    shared_api: Api, content: bytes, status: int, says: str
) -> None:
    before = shared_api.written()
    response = shared_api.client.post(
        "/v1/characters/import", files={"file": ("card", content)}, headers=shared_api.acme
    )
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"]
    assert shared_api.written() == before


def test_erasing_a_character_erases_its_image(api: Api) -> None:
    character = imported(api, png(text_chunk("chara", v2_card())), "image/png")
    images = api.services.settings.data_dir / "images" / character["id"]
    assert list(images.iterdir())
    erased = api.client.delete(
        f"/v1/characters/{character['id']}", params={"erase": "true"}, headers=api.acme
    )
    assert erased.status_code == 204
    assert not images.exists()


def test_the_greeting_opens_the_conversation_once(api: Api) -> None:
    character = imported(api, json.dumps(v2_card()).encode())
    instance = api.client.post(
        f"/v1/characters/{character['id']}/instances",
        json={"name": "Sera of the glade", "user_name": "Ana"},
        headers=api.acme,
    ).json()
    url = f"/v1/instances/{instance['id']}/greeting"

    wrong = api.client.post(url, json={"index": 3}, headers=api.acme)
    assert wrong.status_code == 422 and "no greeting 3" in wrong.json()["error"]["message"]
    greeted = api.client.post(url, json={"index": 2}, headers=api.acme)
    assert greeted.status_code == 201, greeted.text
    assert greeted.json()["content"] == "Welcome back, Ana."
    again = api.client.post(url, json={}, headers=api.acme)
    assert again.status_code == 409 and again.json()["error"]["code"] == "conversation_started"

    messages = api.client.get(
        f"/v1/instances/{instance['id']}/messages", params={"consistent": "true"}, headers=api.acme
    ).json()["items"]
    assert [(m["role"], m["content"], m["name"]) for m in messages] == [
        ("assistant", "Welcome back, Ana.", "Sera of the glade")
    ]


def test_a_random_greeting_is_one_of_the_cards(api: Api) -> None:
    character = imported(api, json.dumps(v2_card()).encode())
    openings = set()
    for n in range(12):
        instance = make_instance(api, character["id"], name=f"Sera {n}")
        greeted = api.client.post(
            f"/v1/instances/{instance['id']}/greeting", json={"index": None}, headers=api.acme
        )
        assert greeted.status_code == 201, greeted.text
        openings.add(greeted.json()["index"])
    assert openings <= {0, 1, 2} and len(openings) > 1


def test_the_cards_macros_system_prompt_and_post_history_reach_the_model(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    card = v2_card(
        description="{{ char }} guards <USER>. {{Weekday}}, {{isodate}}. {{unknown_macro}}",
        system_prompt="{{original}}\nNever leave the glade.",
        post_history_instructions="Answer {{user}} as {{char}}, in two sentences.",
    )
    character = imported(chat_api, json.dumps(card).encode())
    instance = chat_api.client.post(
        f"/v1/characters/{character['id']}/instances",
        json={"name": "Sera", "user_name": "Ana"},
        headers=chat_api.acme,
    ).json()
    chat = f"/v1/instances/{instance['id']}/chat"

    assert chat_api.client.post(chat, json={"message": "Hi"}, headers=chat_api.acme).is_success
    messages = openai_stub.requests[-1]["messages"]
    system = messages[0]["content"]
    assert "Sera guards Ana." in system
    assert re.search(r"(Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, \d{4}-\d\d-\d\d\.", system)
    assert "{{unknown_macro}}" in system
    assert system.startswith("You are Sera, a variation of Seraphina.")  # {{original}}
    assert "Never leave the glade." in system
    assert [m["role"] for m in messages[-2:]] == ["user", "system"]
    assert messages[-1]["content"] == "Answer Ana as Sera, in two sentences."

    # A chat request may say who the user is this time.
    said = chat_api.client.post(
        chat, json={"message": "Hello again", "user_name": "Bea"}, headers=chat_api.acme
    )
    assert said.is_success, said.text
    assert (
        openai_stub.requests[-1]["messages"][-1]["content"]
        == "Answer Bea as Sera, in two sentences."
    )


def test_a_cards_book_becomes_the_characters_lorebook_in_chat_and_in_its_export(
    chat_api: Api, openai_stub: OpenAIStub
) -> None:
    card = v2_card()
    card["data"]["character_book"]["entries"].append(
        {"keys": ["river"], "content": "The river sings at night.", "extensions": {}, "id": "r1"}
    )
    character = imported(chat_api, json.dumps(card).encode())
    attached = chat_api.client.get(
        f"/v1/characters/{character['id']}/lorebooks", headers=chat_api.acme
    ).json()["lorebook_ids"]
    assert len(attached) == 1
    book = chat_api.client.get(f"/v1/lorebooks/{attached[0]}", headers=chat_api.acme).json()
    assert book["name"] == "Glade lore"

    instance = make_instance(chat_api, character["id"], "Sera")
    chat = f"/v1/instances/{instance['id']}/chat"
    answer = chat_api.client.post(
        chat, json={"message": "Is the glade safe?"}, headers=chat_api.acme
    )
    assert answer.status_code == 200, answer.text
    prompt = json.dumps(openai_stub.requests[-1]["messages"])
    assert "The glade heals." in prompt and "The river sings" not in prompt
    [used] = answer.json()["lore_used"]
    assert used["lorebook_id"] == attached[0]

    # Out with the card, and in again as the same book (its defaults now written out).
    book_out = json.loads(exported(chat_api, character["id"], "v2"))["data"]["character_book"]
    given = card["data"]["character_book"]["entries"]
    assert [(e["keys"], e["content"]) for e in book_out["entries"]] == [
        (e["keys"], e["content"]) for e in given
    ]
    assert book_out["entries"][1]["id"] == "r1"  # an editor's text id, kept
    again = imported(chat_api, exported(chat_api, character["id"], "png"), "image/png")
    assert json.loads(exported(chat_api, again["id"], "v2"))["data"]["character_book"] == book_out


def test_a_card_whose_book_is_not_a_book_is_refused_and_nothing_is_written(api: Api) -> None:
    card = v2_card(character_book={"name": "no entries"})
    before = api.client.get("/v1/characters", headers=api.acme).json()
    response = api.client.post("/v1/characters/import", json=card, headers=api.acme)
    assert response.status_code == 422, response.text
    assert "character_book" in response.json()["error"]["message"]
    assert api.client.get("/v1/characters", headers=api.acme).json() == before


def test_the_users_name_is_the_instances_and_its_forks_until_cleared(api: Api) -> None:
    character = imported(api, json.dumps(v2_card()).encode())
    instance = api.client.post(
        f"/v1/characters/{character['id']}/instances",
        json={"name": "Sera", "user_name": "Ana"},
        headers=api.acme,
    ).json()
    fork = api.client.post(
        f"/v1/instances/{instance['id']}/fork", json={"name": "Sera bis"}, headers=api.acme
    )
    assert fork.json()["user_name"] == "Ana"
    path = f"/v1/instances/{instance['id']}"
    cleared = api.client.patch(path, json={"user_name": None}, headers=api.acme)
    assert cleared.json()["user_name"] is None
    at_first = api.client.get(path, params={"version": 2}, headers=api.acme)
    assert at_first.json()["user_name"] == "Ana"
    greeted = api.client.post(f"{path}/greeting", json={"index": 2}, headers=api.acme)
    assert greeted.json()["content"] == "Welcome back, User."


def test_null_clears_a_cards_field(api: Api) -> None:
    character = imported(api, json.dumps(v2_card()).encode())
    cleared = api.client.patch(
        f"/v1/characters/{character['id']}",
        json={"tags": None, "card_extras": None, "creator": None},
        headers=api.acme,
    ).json()
    assert (cleared["tags"], cleared["card_extras"], cleared["creator"]) == ([], {}, "")
    assert cleared["version"] == character["version"] + 3  # one event per field


def test_every_macro_is_filled_however_written_and_an_unknown_one_is_left() -> None:
    moment = datetime(2023, 5, 8, 13, 56, 7, tzinfo=UTC)
    text = (
        "{{char}}/{{ CHAR }}/<BOT>/{{user}}/{{ User }}/<USER>/{{date}}/{{time}}/{{weekday}}/"
        "{{isodate}}/{{isotime}}/{{bot}}/{{random:a,b}}/{{original}}"
    )
    assert fill(text, "Sera", "Ana", moment) == (
        "Sera/Sera/Sera/Ana/Ana/Ana/8 May 2023/13:56/Monday/"
        "2023-05-08/13:56:07/{{bot}}/{{random:a,b}}/{{original}}"
    )
    assert fill("{{user}}", "Sera", None, moment) == "User"


def test_of_two_greetings_at_once_exactly_one_opens_the_conversation(api: Api) -> None:
    character = imported(api, json.dumps(v2_card()).encode())
    instance = make_instance(api, character["id"], name="Sera")
    cards, actor = api.services.cards, Actor("acme", "test", "race")
    barrier = threading.Barrier(2)

    def greet(index: int) -> str:
        barrier.wait()
        try:
            cards.greet("acme", UUID(instance["id"]), index, actor)
        except AlreadyStarted:
            return "refused"
        return "greeted"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(greet, [1, 2]))
    assert outcomes == ["greeted", "refused"]
    assert api.services.app.instance("acme", UUID(instance["id"])).message_count == 1
