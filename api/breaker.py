"""Answers 503 at once while PostgreSQL is unreachable, instead of letting every request sit
through the event store's own retries (ten attempts, each waiting out the connect timeout).

A probe keeps one connection of its own and runs `SELECT 1` every `interval` seconds, trying a
second time at once when the first attempt fails, and trips the breaker when both do (a refused
connection fails both at once; one connect that outlasts its timeout while the server is busy,
as the full test suite met during a checkpoint, is no outage); a request that fails on a lost
connection trips the breaker too. While it is open, requests other than the
operations routes answer `503 database_unavailable` with `Retry-After`; the first good probe
closes it, and the store's pool reconnects by itself.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import psycopg
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from alma.api.errors import database_unavailable

log = logging.getLogger(__name__)

OPERATIONS_PATHS = ("/health", "/metrics", "/docs", "/openapi.json")


class DatabaseBreaker:
    def __init__(self, env: dict[str, str], interval: float = 0.5, timeout_s: int = 2) -> None:
        self._connect_args: dict[str, Any] = {
            "host": env["POSTGRES_HOST"],
            "port": int(env["POSTGRES_PORT"]),
            "user": env["POSTGRES_USER"],
            "password": env["POSTGRES_PASSWORD"],
            "dbname": env["POSTGRES_DBNAME"],
            "connect_timeout": timeout_s,
            "autocommit": True,
        }
        self.interval = interval
        self._down = threading.Event()
        self._stopping = threading.Event()
        self._connection: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def down(self) -> bool:
        return self._down.is_set()

    def trip(self) -> None:
        """A request met a lost connection: the probe will say when it is back."""
        if not self._down.is_set():
            log.warning("database unreachable: answering 503 until it is back")
        self._down.set()

    def probe(self) -> bool:
        """Asks the database now (the loop does every `interval`; /health does on each call)."""
        with self._lock:
            return self._probe()

    def _probe(self) -> bool:
        if not (self._attempt() or self._attempt()):
            self.trip()
            return False
        if self._down.is_set():
            log.warning("database reachable again")
        self._down.clear()
        return True

    def _attempt(self) -> bool:
        try:
            if self._connection is None or self._connection.closed:
                self._connection = psycopg.connect(**self._connect_args)
            self._connection.execute("SELECT 1")
        except psycopg.Error:
            if self._connection is not None:
                with contextlib.suppress(psycopg.Error):
                    self._connection.close()
            self._connection = None
            return False
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="database-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._connection is not None:
            with contextlib.suppress(psycopg.Error):
                self._connection.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.probe()
            self._stopping.wait(self.interval)


class BreakerGate:
    """ASGI middleware: refuses requests while the app's breaker is open."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(OPERATIONS_PATHS):
            services = getattr(scope["app"].state, "services", None)
            breaker = getattr(services, "breaker", None)
            if breaker is not None and breaker.down:
                await database_unavailable(Request(scope))(scope, receive, send)
                return
        await self.app(scope, receive, send)
