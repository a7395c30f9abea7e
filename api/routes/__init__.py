"""The API's routes, one module per resource; and the path placeholder they share, registered
before any of them is defined: `{character_id:id}` is an id beside an import route, as in
`/v1/characters/{character_id:id}` and `/v1/characters/import` on one path level."""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor


class IdNotImport(Convertor[str]):
    """An id in a path: anything but `import`, which is the import's path alone (so a GET of it
    is a 405, not a malformed id, and OPTIONS names the import's methods only); a malformed id
    still reaches its route, which answers 422 naming it."""

    regex = "(?!import$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("id", IdNotImport())
