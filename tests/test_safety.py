"""`alma serve` refuses unsafe settings with a clear message, and never prints a secret when it
listens beyond this machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from alma.api.services import build_services
from alma.settings import Settings
from tests.cli import (
    ALMA,
    KEY_RE,
    assert_clean_failure,
    cli_env,
    free_port,
    running,
    wait_for_health,
)


@pytest.fixture
def store(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", _env_file=None)  # type: ignore[call-arg]


def test_serve_refuses_projections_elsewhere_without_a_chroma_server(store: Settings) -> None:
    env = {**cli_env(store), "ALMA_RUN_PROJECTIONS": "false"}
    result = subprocess.run(
        [ALMA, "serve", "--port", str(free_port())],
        env=env,
        cwd=store.data_dir.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert_clean_failure(result)
    assert result.returncode == 2
    assert "refusing to start" in result.stderr
    assert "ALMA_RUN_PROJECTIONS=false needs ALMA_CHROMA_URL" in result.stderr


@pytest.mark.slow
def test_serve_beyond_loopback_makes_no_default_key(store: Settings, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with running(store, ["serve", "--host", "0.0.0.0", "--port", str(port)], log) as process:
        wait_for_health(f"http://127.0.0.1:{port}", process, log)
        refused = httpx.get(f"http://127.0.0.1:{port}/v1/characters", timeout=5)
        assert refused.status_code == 401
    assert not KEY_RE.findall(log.read_text()), log.read_text()
    assert "alma keys create --tenant NAME" in log.read_text()
    services = build_services(store)
    try:
        assert not services.app.has_keys()
    finally:
        services.close()
