"""`OPTIONS` and a 405 name every method a path has in `Allow` (not only those of the first route
that matched the path), and a method a path does not have is a 405, never a route below it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import Api

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _paths(api: Api) -> dict[str, set[str]]:
    """Each path of the schema, its placeholders filled, with the methods the schema gives it."""
    schema: dict[str, Any] = api.client.get("/openapi.json").json()
    ids = {
        "character_id": uuid.uuid4(),
        "instance_id": uuid.uuid4(),
        "memory_id": uuid.uuid4(),
        "message_id": uuid.uuid4(),
        "lorebook_id": uuid.uuid4(),
        "entry_id": 1,
        "model": uuid.uuid4(),  # the OpenAI-compatible name of an instance
        "response_id": f"resp_{uuid.uuid4().hex}{uuid.uuid4().hex}",
    }
    return {
        path.format(**ids): {method.upper() for method in operations}
        for path, operations in schema["paths"].items()
    }


def _allow(response: Any) -> set[str]:
    return {method.strip() for method in response.headers["allow"].split(",")}


def test_options_names_every_method_of_each_path(shared_api: Api) -> None:
    for path, methods in _paths(shared_api).items():
        response = shared_api.client.options(path, headers=shared_api.acme)
        assert response.status_code == 204, (path, response.text)
        assert _allow(response) == methods | {"OPTIONS"}, path


def test_a_method_a_path_lacks_answers_405_naming_every_method_it_has(shared_api: Api) -> None:
    for path, methods in _paths(shared_api).items():
        for method in set(METHODS) - methods:
            response = shared_api.client.request(method, path, headers=shared_api.acme, json={})
            assert response.status_code == 405, (method, path, response.text)
            if method != "HEAD":  # an answer to HEAD has no body
                assert response.json()["error"]["code"] == "method_not_allowed"
            assert _allow(response) == methods | {"OPTIONS"}, (method, path)


@pytest.mark.parametrize("method", ["PATCH", "DELETE", "PUT"])
def test_search_is_not_a_memory_id(shared_api: Api, method: str) -> None:
    before = shared_api.written()
    response = shared_api.client.request(
        method,
        f"/v1/instances/{uuid.uuid4()}/memories/search",
        headers=shared_api.acme,
        json={"text": "x"},
    )
    assert response.status_code == 405, response.text
    assert _allow(response) == {"GET", "OPTIONS"}
    assert shared_api.written() == before
