"""A real TCP proxy between alma and PostgreSQL that forwards every byte, and can cut a connection
at the worst moment: right after PostgreSQL committed an insert of events, before the commit's
answer reaches alma (what a network fault, or a server restart, at that moment does). Tests arm it
with `drop_commits`, optionally with something to do first (restart the server); `refuse` makes it
turn every new connection away, as a server that is down does.

It reads PostgreSQL's wire protocol only as far as it must: the client's startup packets (it
declines TLS for the server, so the rest can be read) and the server's messages, whose
CommandComplete tags say when an events insert's table lock (`LOCK TABLE`) was taken and when its
transaction committed (`COMMIT`).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


class PostgresProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.dropped = 0  # commits whose answer was never delivered
        self._armed = 0
        self._before_drop: Callable[[], None] | None = None
        self._refusing = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._stopping = threading.Event()
        threading.Thread(target=self._accept, name="pg-proxy", daemon=True).start()

    def url(self, schema: str, user: str = "postgres", dbname: str = "test") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}?schema={schema}"

    def drop_commits(self, count: int = 1, before: Callable[[], None] | None = None) -> None:
        """Cuts the connection of the next `count` events inserts as their COMMIT's answer comes
        back, after calling `before` (the commit is durable by then, whatever `before` does)."""
        with self._lock:
            self._armed = count
            self._before_drop = before

    def refuse(self, refusing: bool = True) -> None:
        """Cuts every connection and turns new ones away, as a server that is down does; or
        lets them in again."""
        if not refusing:
            self._refusing.clear()
            return
        self._refusing.set()
        with self._lock:
            for sock in self._sockets:
                _close(sock)

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _close(sock)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing.is_set():
                _close(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=5)
            server.settimeout(None)
        except OSError:
            _close(client)
            return
        with self._lock:
            self._sockets |= {client, server}
        try:
            if self._startup(client, server):
                threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
                self._answers(server, client)
        except OSError:
            pass  # either side went away: both are closed below
        finally:
            with self._lock:
                self._sockets -= {client, server}
            _close(client)
            _close(server)

    def _startup(self, client: socket.socket, server: socket.socket) -> bool:
        """Declines TLS and GSS encryption itself, then passes the startup packet on."""
        while True:
            header = _read(client, 4)
            if header is None:
                return False
            (length,) = struct.unpack("!I", header)
            body = _read(client, length - 4)
            if body is None:
                return False
            code = struct.unpack("!I", body[:4])[0] if len(body) >= 4 else 0
            if length == 8 and code in (_SSL_REQUEST, _GSSENC_REQUEST):
                client.sendall(b"N")
                continue
            server.sendall(header + body)
            return True

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                target.sendall(chunk)
        _close(target)
        _close(source)

    def _answers(self, server: socket.socket, client: socket.socket) -> None:
        """The server's messages, passed on one by one, watching each transaction's tags."""
        buffer = b""
        locked = False  # this transaction took the events table's lock: it inserts events
        while True:
            try:
                chunk = server.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            sent = 0
            while len(buffer) - sent >= 5:
                kind = buffer[sent : sent + 1]
                (length,) = struct.unpack("!I", buffer[sent + 1 : sent + 5])
                end = sent + 1 + length
                if end > len(buffer):
                    break
                payload = buffer[sent + 5 : end]
                if kind == b"C" and payload.startswith(b"LOCK TABLE"):
                    locked = True
                elif kind == b"C" and payload.startswith(b"COMMIT") and locked:
                    if self._take_aim():
                        with contextlib.suppress(OSError):
                            client.sendall(buffer[:sent])
                        return  # the commit's answer is never delivered
                elif kind == b"Z" and payload[:1] == b"I":
                    locked = False
                sent = end
            try:
                client.sendall(buffer[:sent])
            except OSError:
                return
            buffer = buffer[sent:]

    def _take_aim(self) -> bool:
        with self._lock:
            if self._armed <= 0:
                return False
            self._armed -= 1
            self.dropped += 1
            before = self._before_drop
        if before is not None:
            before()
        return True


def _read(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
