"""A real `alma serve` for the benchmarks that go through HTTP: its environment, a key, the
server itself on a free port."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from bench.report import free_port, log

ROOT = Path(__file__).resolve().parents[1]
ALMA = Path(sys.executable).parent / "alma"


def alma_env(folder: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This machine's environment without alma's, OpenAI's or PostgreSQL's settings (so the
    embedded default is what runs), the data in `folder`, then `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ALMA_", "OPENAI_", "POSTGRES_"))
    }
    env["ALMA_DATA_DIR"] = str(folder)
    # The checkout first: an editable install made before a package was added misses it.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env | dict(extra or {})


def create_key(folder: Path, tenant: str, extra: Mapping[str, str] | None = None) -> str:
    """A new API key for `tenant` (`alma keys create`), before the server starts."""
    return subprocess.run(
        [str(ALMA), "keys", "create", "--tenant", tenant],
        cwd=folder,
        env=alma_env(folder, extra),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@contextlib.contextmanager
def alma_serve(
    folder: Path, extra: Mapping[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`alma serve` on a free port of 127.0.0.1, once `/health` answers; its output goes to
    `folder/serve.log`, whose end is shown if it does not come up."""
    port = free_port()
    env = alma_env(folder, extra) | {"ALMA_HOST": "127.0.0.1", "ALMA_PORT": str(port)}
    with (folder / "serve.log").open("wb") as output:
        # Its own folder as working directory: no `.env` of the checkout is read.
        server = subprocess.Popen(
            [str(ALMA), "serve"], cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            try:
                wait_until_healthy(server, base_url, timeout=120)
            except RuntimeError:
                tail = (folder / "serve.log").read_text(errors="replace").splitlines()[-20:]
                log("alma serve said:\n" + "\n".join(tail))
                raise
            yield server, base_url
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def wait_until_healthy(server: subprocess.Popen[bytes], base_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"alma serve exited with status {server.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"alma serve was not healthy within {timeout} s")
