"""Past chats from SillyTavern: a chat file (`.jsonl`) imported with its speakers and send dates,
searched, exported in the same format and imported again; bad files refused by line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import Api, make_character, make_instance, search

HEADER = {
    "user_name": "Caroline",
    "character_name": "Rosa",
    "create_date": "2023-06-19@14h20m00s",
    "chat_metadata": {"note_prompt": ""},
}
# One message per form SillyTavern has written `send_date` in over the years.
LINES: list[dict[str, Any]] = [
    {
        "name": "Rosa",
        "is_user": False,
        "send_date": "June 19, 2023 2:20pm",
        "mes": "¡Buenas tardes! ¿Qué te trae por la sierra?",
    },
    {
        "name": "Caroline",
        "is_user": True,
        "send_date": "2024-7-12@01h31m37s",
        "mes": "Vengo a buscar hierbas para mi hermana Lucía, que es enfermera.",
        "extra": {},
    },
    {
        "name": "Rosa",
        "is_user": False,
        "send_date": "2024-6-5 @14h 56m 50s 682ms",
        "mes": "La ruda y el romero le vendrán bien.",
        "swipes": ["La ruda y el romero le vendrán bien.", "Otra cosa"],
        "swipe_id": 0,
    },
    {
        "name": "Caroline",
        "is_user": True,
        "send_date": 1720748000123,
        "mes": "Mi perro Tizón se comió el romero.",
    },
    {"name": "Rosa", "is_user": False, "send_date": "1720748060000", "mes": "¡Ay, ese Tizón!"},
]
SENT = [
    datetime(2023, 6, 19, 14, 20, tzinfo=UTC),
    datetime(2024, 7, 12, 1, 31, 37, tzinfo=UTC),
    datetime(2024, 6, 5, 14, 56, 50, 682000, tzinfo=UTC),
    datetime(2024, 7, 12, 1, 33, 20, 123000, tzinfo=UTC),
    datetime(2024, 7, 12, 1, 34, 20, tzinfo=UTC),
]


def _file(lines: list[Any], header: Any = HEADER) -> bytes:
    rows = [header, *lines] if header is not None else lines
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


def _upload(api: Api, instance_id: str, data: bytes, headers: dict[str, str] | None = None) -> Any:
    return api.client.post(
        f"/v1/instances/{instance_id}/messages",
        files={"file": ("chat.jsonl", data, "application/jsonl")},
        headers=headers or api.acme,
    )


def _conversation(api: Api, instance_id: str) -> list[tuple[str, str, str | None, datetime]]:
    response = api.client.get(
        f"/v1/instances/{instance_id}/messages",
        params={"consistent": "true", "limit": 500},
        headers=api.acme,
    )
    assert response.status_code == 200, response.text
    return [
        (m["role"], m["content"], m["name"], datetime.fromisoformat(m["timestamp"]))
        for m in response.json()["items"]
    ]


def test_a_sillytavern_chat_comes_in_is_searched_goes_out_and_comes_in_again(api: Api) -> None:
    character = make_character(api)
    first = str(make_instance(api, character["id"], name="Rosa")["id"])

    response = _upload(api, first, _file(LINES))

    assert response.status_code == 201, response.text
    assert len(response.json()["ids"]) == len(LINES)
    expected = [
        ("user" if line["is_user"] else "assistant", line["mes"], line["name"], sent)
        for line, sent in zip(LINES, SENT, strict=True)
    ]
    assert _conversation(api, first) == expected

    [hit, *_] = search(api, first, "¿Qué hizo el perro Tizón?")
    assert (hit["text"], hit["speaker"]) == ("Mi perro Tizón se comió el romero.", "Caroline")

    exported = api.client.get(
        f"/v1/instances/{first}/messages",
        params={"format": "sillytavern", "consistent": "true"},
        headers=api.acme,
    )
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"].startswith("application/jsonl")
    header, *lines = [json.loads(line) for line in exported.text.splitlines()]
    assert (header["user_name"], header["character_name"]) == ("Caroline", "Rosa")
    assert [(m["name"], m["is_user"], m["mes"]) for m in lines] == [
        (line["name"], line["is_user"], line["mes"]) for line in LINES
    ]
    assert [m["send_date"] for m in lines] == [int(s.timestamp() * 1000) for s in SENT]

    second = str(make_instance(api, character["id"], name="Rosa otra vez")["id"])
    again = _upload(api, second, exported.content)
    assert again.status_code == 201, again.text
    assert _conversation(api, second) == expected


def test_a_chat_file_without_a_header_or_dates_is_taken_as_it_comes(api: Api) -> None:
    instance = str(make_instance(api, make_character(api)["id"])["id"])
    lines = [
        {"name": "Caroline", "is_user": True, "mes": "Hola"},
        {"is_user": False, "mes": "¡Hola!"},
    ]
    before = datetime.now(UTC)

    response = _upload(api, instance, _file(lines, header=None))

    assert response.status_code == 201, response.text
    said = _conversation(api, instance)
    assert [(role, text, name) for role, text, name, _ in said] == [
        ("user", "Hola", "Caroline"),
        ("assistant", "¡Hola!", "Rosa"),  # an assistant's turn without a name: the instance's
    ]
    assert all(when >= before for *_, when in said)


def test_a_bad_chat_file_is_refused_naming_its_line_and_writes_nothing(api: Api) -> None:
    instance = str(make_instance(api, make_character(api)["id"])["id"])
    good = LINES[0]
    cases = [
        (_file([good, "{not json"]), "line 3: not JSON"),
        (_file([good, good, ["a", "list"]]), "line 4: a line must be a JSON object"),
        (_file([good, {"name": "Rosa", "is_user": False}]), "line 3: content"),
        (_file([{**good, "send_date": "ayer por la tarde"}]), "line 2: send_date"),
        (_file([{**good, "is_user": "yes"}]), "line 2: is_user"),
        (_file([{**good, "name": 7}]), "line 2: name"),
        (_file([], header=HEADER), "no messages"),
        (b"\xff\xfe\x00garbage", "UTF-8"),
    ]
    written = api.written()
    for data, said in cases:
        response = _upload(api, instance, data)
        assert response.status_code == 422, (said, response.text)
        assert said in response.json()["error"]["message"], response.text
    wrong_field = api.client.post(
        f"/v1/instances/{instance}/messages",
        files={"chat": ("chat.jsonl", _file(LINES), "application/jsonl")},
        headers=api.acme,
    )
    assert wrong_field.status_code == 422
    assert "`file`" in wrong_field.json()["error"]["message"]
    assert (
        api.client.get(
            f"/v1/instances/{instance}/messages",
            params={"format": "sillytavern"},
            headers=api.rival,
        ).status_code
        == 404
    )
    assert _upload(api, instance, _file(LINES), headers=api.rival).status_code == 404
    assert api.written() == written


@pytest.mark.slow
def test_months_of_chat_come_in_past_the_general_body_limit_up_to_the_imports(api: Api) -> None:
    """A real chat file is bigger than an API request: it has the import limit (10 MiB), not the
    body limit (1 MiB), and past it is refused whole."""
    instance = str(make_instance(api, make_character(api)["id"])["id"])
    said = "Ayer subimos al cerro a buscar ruda, romero y hierba del sapo para el té de Lucía. "
    lines = [
        {"name": ("Rosa", "Caroline")[n % 2], "is_user": bool(n % 2), "mes": f"{n}. {said * 18}"}
        for n in range(800)
    ]
    months = _file(lines)
    assert 1024 * 1024 < len(months) < 10 * 1024 * 1024

    response = _upload(api, instance, months)

    assert response.status_code == 201, response.text
    assert len(response.json()["ids"]) == 800
    written = api.written()
    too_big = _upload(api, instance, _file(lines * 9))
    assert too_big.status_code == 413, too_big.text
    assert too_big.json()["error"]["code"] == "payload_too_large"
    assert api.written() == written
