"""The deployment files, checked statically (Docker cannot run here): docker-compose.yml, the
Dockerfile, .dockerignore and .env.example agree with each other, with README and with what
`Settings` accepts. The same topology runs for real, without Docker, in test_scale_out.py."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from alma.settings import Settings
from tests.cli import ALMA

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"postgres", "chroma", "api", "worker"}
PUBLISHED = "127.0.0.1:8011-8020:8011"


def _env_names(field: str) -> set[str]:
    alias = Settings.model_fields[field].validation_alias
    return set(alias.choices) if isinstance(alias, AliasChoices) else {f"ALMA_{field.upper()}"}


SETTING_NAMES = set().union(*(_env_names(field) for field in Settings.model_fields))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    parsed: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return parsed


@pytest.fixture(scope="module")
def dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [" ".join(i.split()) for i in "\n".join(lines).replace("\\\n", " ").splitlines() if i]


def _readme() -> str:
    """README and the guides it links to in docs/, where deployment and settings are told."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(page.read_text(encoding="utf-8") for page in pages)


def test_every_service_has_an_image_a_health_check_and_declared_volumes(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    declared = set(compose["volumes"])
    used = set()
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert not source.startswith((".", "/")), f"{name} mounts a host path: {mount}"
            used.add(source)
    assert used == declared == {"postgres-data", "chroma-data"}
    assert services["chroma"]["image"].startswith("chromadb/chroma:")
    assert services["chroma"]["entrypoint"] + services["chroma"]["command"][:1] == [
        "chroma",
        "run",
    ]


def test_api_and_worker_run_the_image_with_settings_from_env(compose: dict[str, Any]) -> None:
    api, worker = compose["services"]["api"], compose["services"]["worker"]
    for service in (api, worker):
        assert service["build"] == "."
        assert service["env_file"] == ".env"
        assert service["environment"]["ALMA_DATABASE_URL"].startswith("postgresql://")
        assert service["environment"]["ALMA_CHROMA_URL"] == "http://chroma:8000"
        for dependency in ("postgres", "chroma"):
            assert service["depends_on"][dependency]["condition"] == "service_healthy"
    assert api["command"] == ["alma", "serve"]
    assert worker["command"] == ["alma", "worker"]
    assert "ports" not in worker
    # API processes never follow the log (the worker does), and `alma serve` would refuse that
    # without a Chroma server.
    assert api["environment"]["ALMA_RUN_PROJECTIONS"] == "false"
    assert "ALMA_RUN_PROJECTIONS" not in worker["environment"]


def test_the_api_scales_without_a_fixed_host_port(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert "container_name" not in api
    assert api["ports"] == [PUBLISHED]
    port = api["environment"]["ALMA_PORT"]
    assert PUBLISHED.endswith(f":{port}")
    assert any(f"127.0.0.1:{port}/health" in part for part in api["healthcheck"]["test"])
    assert PUBLISHED in _readme()
    assert "--scale api=" in _readme()


def test_every_alma_name_is_a_setting(compose: dict[str, Any]) -> None:
    in_compose = {
        name
        for service in compose["services"].values()
        for name in service.get("environment", {})
        if name.startswith("ALMA_")
    }
    in_dockerfile = set(re.findall(r"\b(ALMA_[A-Z0-9_]+)=", (ROOT / "Dockerfile").read_text()))
    in_readme = set(re.findall(r"\b(ALMA_[A-Z0-9_]*[A-Z0-9])\b", _readme()))
    in_readme -= {name for name in in_readme if name.startswith("ALMA_TEST_")}  # the suite's
    assert in_compose and in_dockerfile and in_readme
    for where, names in (
        ("compose", in_compose),
        ("Dockerfile", in_dockerfile),
        (
            "README",
            in_readme,
        ),
    ):
        assert names <= SETTING_NAMES, f"{where} names unknown settings: {names - SETTING_NAMES}"


def test_env_example_lists_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^(?:# ?)?([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))
    for field in Settings.model_fields:
        assert _env_names(field) & listed, f".env.example does not list the setting {field}"
    assert listed - SETTING_NAMES == {"POSTGRES_PASSWORD"}  # what docker-compose.yml needs


def test_dockerfile_is_slim_non_root_and_installs_cpu_torch_first(dockerfile: list[str]) -> None:
    assert dockerfile[0] == "FROM python:3.11-slim"
    users = [line.split()[1] for line in dockerfile if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    runs = [line for line in dockerfile if line.startswith("RUN ")]

    def first(fragment: str) -> int:
        return next(n for n, line in enumerate(runs) if fragment in line)

    torch = first("pip install torch==2.13.0 $TORCH_SOURCE")
    assert 'ARG TORCH_SOURCE="--index-url https://download.pytorch.org/whl/cpu"' in dockerfile
    assert runs[torch].startswith("RUN pip install --upgrade pip &&")  # then the extras match
    project = first('pip install ".[local-1.5b]"')  # with the default local model's pieces
    assert torch < project
    assert project < first("alma models") < first("useradd")
    assert dockerfile[-1] == 'CMD ["alma", "serve"]'


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".env", ".git", ".venv", ".venv-clients", ".alma", "tests"):
        assert path in ignored


@pytest.mark.slow
def test_alma_models_prepares_what_the_image_needs(tmp_path: Path) -> None:
    """The build step `RUN alma models`, run here into an empty cache."""
    cache = tmp_path / "models"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TIKTOKEN_CACHE_DIR": str(cache / "t")}
    env["ALMA_MODEL_CACHE_DIR"] = str(cache)
    result = subprocess.run(
        [ALMA, "models"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert list(cache.glob("embeddings/*/model.onnx"))
    assert (cache / "whisper-base" / "model.bin").is_file()
    assert len(list((cache / "t").iterdir())) == 1
