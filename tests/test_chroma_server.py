"""The deployment shape of the memory index: a Chroma server (`chroma run`) instead of the
embedded one, selected by ALMA_CHROMA_URL."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from alma.api.services import build_services
from alma.domain import Actor
from alma.settings import Settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def chroma_server(path: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`chroma run` on `port`, storing under `path`; ready when this yields."""
    chroma = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
    server = subprocess.Popen(
        [chroma, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail("chroma run did not start within 30 s")
        yield server
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=10)


@pytest.fixture
def chroma_url(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    with chroma_server(tmp_path / "chroma", port):
        yield f"http://127.0.0.1:{port}"


@pytest.mark.slow
def test_memories_are_indexed_and_found_through_a_chroma_server(
    settings: Settings, chroma_url: str
) -> None:
    services = build_services(settings.model_copy(update={"chroma_url": chroma_url}))
    try:
        app, actor = services.app, Actor("acme", "test", "server")
        character = app.create_character("acme", {"name": "Rosa", "description": ""}, actor)
        instance = app.create_instance("acme", character.id, "Rosa", "", actor)
        app.add_memory("acme", instance.id, "Su perro se llama Canelo", actor)
        app.add_memory("acme", instance.id, "Vive cerca del río Guadalquivir", actor)
        services.memory.catch_up()

        hits = services.memory_index.search(instance.id, "¿cómo se llama el perro?", k=1)
        assert [hit.doc.text for hit in hits] == ["Su perro se llama Canelo"]
        names = [c.name for c in services.memory_index.vectors.client.list_collections()]
        assert names == [f"alma-g1-{instance.id.hex}"]
    finally:
        services.close()
