"""The web app's files as alma serves them: a page whose policy lets it load and call nothing
but alma, that writes no user text as markup, speaks English and Spanish alike, works offline."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from tests.conftest import Api

STATIC = Path(__file__).resolve().parent.parent / "api" / "static"
SCRIPTS = sorted((STATIC / "js").glob("*.js"))
_FOREIGN = re.compile(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}")


def test_the_page_and_its_files_come_under_a_strict_content_security_policy(
    shared_api: Api,
) -> None:
    page = shared_api.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    html = page.text
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []  # no inline script
    assert " style=" not in html and "<style" not in html and " on" not in html.replace("\n", " ")
    assets = re.findall(r'(?:src|href)="(/web/[^"]+)"', html)
    assert "/web/js/main.js" in assets and "/web/app.css" in assets
    for path in assets + [f"/web/js/{p.name}" for p in SCRIPTS]:
        served = shared_api.client.get(path)
        assert served.status_code == 200, path
        assert served.headers["content-security-policy"] == policy
        kind = "text/javascript" if path.endswith(".js") else "text/css"
        assert served.headers["content-type"].startswith(kind), path


def test_files_are_sent_compressed_to_a_browser_that_takes_gzip(shared_api: Api) -> None:
    packed = shared_api.client.get("/web/js/chat.js", headers={"Accept-Encoding": "gzip"})
    assert packed.headers["content-encoding"] == "gzip"
    # httpx unpacks it: the same bytes as the file
    assert packed.content == (STATIC / "js" / "chat.js").read_bytes()
    assert len(gzip.compress(packed.content)) < len(packed.content)


@pytest.mark.parametrize(
    "path", ["/web/nothing.js", "/web/%2e%2e/routes/web.py", "/web/..%2f..%2fsettings.py"]
)
def test_nothing_outside_the_app_s_folder_is_served(shared_api: Api, path: str) -> None:
    response = shared_api.client.get(path)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"


def test_no_script_writes_markup_or_calls_another_host() -> None:
    for script in SCRIPTS:
        code = script.read_text(encoding="utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in code, f"{script.name} uses {sink}"
    for path in STATIC.rglob("*"):
        if path.is_file():
            assert not _FOREIGN.findall(path.read_text(encoding="utf-8")), path.name


def _texts(language: str) -> set[str]:
    source = (STATIC / "js" / "i18n.js").read_text(encoding="utf-8")
    block = source.split(f"  {language}: {{", 1)[1].split("\n  },", 1)[0]
    return set(re.findall(r"(?:^|[\s{,])([A-Za-z_]\w*): [\"`]", block))


def test_every_text_of_the_page_is_in_english_and_spanish() -> None:
    english, spanish = _texts("en"), _texts("es")
    assert english and english == spanish, english ^ spanish
    used = {
        name
        for script in SCRIPTS
        for name in re.findall(r"\bt\(\"(\w+)\"", script.read_text(encoding="utf-8"))
    }
    assert used - english == set(), used - english
