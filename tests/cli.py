"""Running the installed `alma` command in tests: one-shot commands, background servers, and
the keys and headers to talk to them."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from alma.settings import Settings

_BESIDE_PYTHON = Path(sys.executable).parent / "alma"
ALMA = str(_BESIDE_PYTHON) if _BESIDE_PYTHON.exists() else shutil.which("alma") or "alma"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
KEY_RE = re.compile(r"alma_[A-Za-z0-9_-]+")


def cli_env(settings: Settings) -> dict[str, str]:
    """The environment a user would give `alma` for this store, and nothing else of ours."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("ALMA_")}
    env["ALMA_DATA_DIR"] = str(settings.data_dir)
    if settings.database_url is not None:
        env["ALMA_DATABASE_URL"] = settings.database_url
    return env


def alma(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs `alma ARGS` to completion; cwd is outside the repository so no `.env` is read."""
    return subprocess.run(
        [ALMA, *args],
        env=cli_env(settings),
        cwd=settings.data_dir.parent,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )


def assert_clean_failure(result: subprocess.CompletedProcess[str]) -> None:
    """A refused command: non-zero exit, nothing on stdout, a reason on stderr, no traceback."""
    assert result.returncode != 0, result
    assert result.stdout == "", result
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip(), result


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def create_key(settings: Settings, tenant: str) -> tuple[str, str]:
    result = alma(settings, "keys", "create", "--tenant", tenant)
    assert result.returncode == 0, result.stderr
    (key,) = result.stdout.splitlines()
    key_ids = UUID_RE.findall(result.stderr)
    assert len(key_ids) == 1, result.stderr
    return key_ids[0], key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running(
    settings: Settings,
    args: Sequence[str],
    log: Path,
    env: dict[str, str] | None = None,
    alma: Sequence[str] = (ALMA,),
) -> Iterator[subprocess.Popen[str]]:
    """`alma ARGS` in the background, with `env` added to the store's environment (`alma`: the
    command that runs it, e.g. another environment's Python)."""
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(
            [*alma, *args],
            env={**cli_env(settings), **(env or {})},
            cwd=settings.data_dir.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                pytest.fail(f"`alma {' '.join(args)}` did not stop on SIGTERM")


# How long a start may take: a first one joins the local model's pieces (1.1 GB) and checks
# them, and exports the embedding model, which on a busy machine took over a minute.
START_S = 240


def wait_for_line(process: subprocess.Popen[str], log: Path, line: str) -> None:
    """Until the background `alma` command has printed `line` (e.g. a worker following)."""
    deadline = time.monotonic() + START_S
    while line not in log.read_text(encoding="utf-8"):
        if process.poll() is not None:
            pytest.fail(f"alma exited with {process.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"alma did not print {line!r} within {START_S} s:\n{log.read_text()}")
        time.sleep(0.1)


def wait_for_health(base: str, process: subprocess.Popen[str], log: Path) -> httpx.Response:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"alma serve exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.TransportError):  # not listening yet: ask again
            response = httpx.get(f"{base}/health", timeout=2)
            if response.status_code == 200:
                return response
        time.sleep(0.1)
    pytest.fail(f"alma serve did not answer /health within {START_S} s:\n{log.read_text()}")
