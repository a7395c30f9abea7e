"""The interactive API documentation (/docs, /redoc) is served by alma itself, so it works on a
machine with no internet."""

from __future__ import annotations

import re

import pytest

from tests.conftest import Api

_URL = re.compile(r"""(?:src|href|url)\s*[:=]\s*["']([^"']+)["']""")
_FOREIGN = re.compile(r"(?:https?:)?//[A-Za-z0-9.-]+")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_documentation_pages_load_everything_from_alma(shared_api: Api, page: str) -> None:
    response = shared_api.client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert not _FOREIGN.findall(html), f"{page} refers to another host: {_FOREIGN.findall(html)}"

    assets = [url for url in _URL.findall(html) if not url.startswith("#")]
    assert any(url.endswith(".js") for url in assets), assets
    for url in assets:
        assert url.startswith("/"), url
        fetched = shared_api.client.get(url)
        assert fetched.status_code == 200, url
        assert len(fetched.content) > 0, url
