"""alma as installed: one name in site-packages, packages that import only what the architecture
allows, and stores written before alma became one package still served."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import eventsourcing.utils
import httpx
import pytest
from eventsourcing.utils import construct_topic

from alma.api.services import build_services
from alma.domain import Actor
from alma.settings import Settings
from tests.cli import bearer, free_port, running, wait_for_health

ROOT = Path(__file__).resolve().parent.parent

# Who may import whom (ARCHITECTURE.md). `settings`, `metrics`, `packaged` (model files that
# ship in packages) and `language` (Spanish or English?) are leaves anyone may use;
# `smooth_int8` is the embedding export's int8 rewrite.
LEAVES = {"settings", "metrics", "packaged", "language"}
ALLOWED = {
    "domain": {"domain"},
    "stores": {"stores", "domain"},
    "projections": {"projections", "domain", "embeddings", "stores"},
    "llm": {"llm"},
    "chat": {"chat", "projections", "domain", "llm", "stores"},
    "voice": {"voice"},
    "embeddings": {"smooth_int8"},
    "smooth_int8": set(),
    "api": {"api", "chat", "voice", "projections", "domain", "llm", "stores", "embeddings"},
}
# Libraries that would drag a layer out of its job: the domain stores nothing itself, and read
# models never call a model.
FORBIDDEN = {
    "domain": {
        *("sqlite3", "psycopg", "psycopg_pool", "eventsourcing.postgres", "eventsourcing.sqlite"),
        *("chromadb", "openai", "fastapi"),
    },
    "projections": {"openai", "xllamacpp", "fastapi"},
}


def _sources(part: str) -> list[Path]:
    folder = ROOT / part
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [ROOT / f"{part}.py"]


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "alma":  # `from alma import metrics`
                yield from (f"alma.{alias.name}" for alias in node.names)
            else:
                yield node.module


def test_each_part_imports_only_what_the_architecture_allows() -> None:
    wrong = []
    for part, allowed in ALLOWED.items():
        for path in _sources(part):
            for name in _imports(path):
                head, _, rest = name.partition(".")
                if head == "alma":
                    target = rest.partition(".")[0]
                    if target not in allowed | LEAVES:
                        wrong.append(f"{path.relative_to(ROOT)} imports alma.{target}")
                elif any(name == f or name.startswith(f + ".") for f in FORBIDDEN.get(part, ())):
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
                elif head in ALLOWED.keys() | LEAVES:
                    wrong.append(f"{path.relative_to(ROOT)} imports {name} outside `alma.`")
    assert not wrong, "imports against ARCHITECTURE.md:\n" + "\n".join(wrong)


@pytest.mark.slow
def test_the_wheel_installs_one_name(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("alma-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    distribution = "-".join(wheel.name.split("-")[:2])
    assert {name.split("/")[0] for name in names} == {"alma", f"{distribution}.dist-info"}
    for part in ALLOWED:
        module = f"alma/{part}/__init__.py" if (ROOT / part).is_dir() else f"alma/{part}.py"
        assert module in names, f"{module} is missing from the wheel"
    assert "alma/api/routes/__init__.py" in names
    # The web app's files travel with it: `alma serve` serves them from the package.
    assert {"alma/api/static/index.html", "alma/api/static/js/main.js"} <= set(names)


@contextmanager
def topics_before_one_package() -> Iterator[None]:
    """Writes as alma did when its domain was the top-level module `domain`: every event and
    snapshot is stored under `domain.…` (and encrypted bound to that topic)."""
    cache = eventsourcing.utils._type_cache

    def old_topic(obj: type) -> str:
        topic = construct_topic(obj)
        return topic.removeprefix("alma.") if topic.startswith("alma.domain.") else topic

    saved = dict(cache)
    cache.clear()
    original = eventsourcing.utils.construct_topic
    eventsourcing.utils.construct_topic = old_topic  # type: ignore[assignment]
    try:
        yield
    finally:
        eventsourcing.utils.construct_topic = original
        cache.clear()
        cache.update(saved)


@pytest.mark.slow
def test_a_store_written_before_alma_was_one_package_is_still_served(
    settings: Settings, tmp_path: Path
) -> None:
    actor = Actor("acme", "cli", "old")
    with topics_before_one_package():
        services = build_services(settings)
        try:
            app = services.app
            character = app.create_character("acme", {"name": "Doña Rosa"}, actor)
            instance = app.create_instance("acme", character.id, "Rosa", "Vive en Oaxaca", actor)
            app.add_memory("acme", instance.id, "Su hermana Lucía es enfermera", actor)
            _, key = app.issue_key("acme", actor)
            stored = [n.topic for n in app.recorder.select_notifications(start=1, limit=100)]
        finally:
            services.close()
    assert stored and all(topic.startswith("domain.") for topic in stored), stored

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with running(settings, ["serve", "--port", str(port)], log) as process:
        wait_for_health(base, process, log)
        got = httpx.get(f"{base}/v1/instances/{instance.id}", headers=bearer(key), timeout=30)
        assert got.status_code == 200, got.text
        assert (got.json()["name"], got.json()["memory"]) == ("Rosa", "Vive en Oaxaca")
        memories = httpx.get(
            f"{base}/v1/instances/{instance.id}/memories",
            params={"consistent": "true"},
            headers=bearer(key),
            timeout=90,
        )
        assert memories.status_code == 200, memories.text
        assert [m["text"] for m in memories.json()["items"]] == ["Su hermana Lucía es enfermera"]
    assert "No API keys yet" not in log.read_text(), "the old key was not seen"
