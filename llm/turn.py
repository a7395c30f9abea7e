"""Whose turn it is at a model that answers one request at a time (the local model).

Chats take it in turn, each waiting at most its bound for the chats before it. Background work
(memory formation) takes it only when no chat holds it or waits for it, and gives it up as soon
as a chat asks: its client stops reading the answer when `wanted` says so, and the work is tried
again later. A chat waits for background work only until it notices, and is never refused for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Turn:
    """One side's way to the model: `acquire(timeout)` waits at most `timeout` seconds (True
    once held), `release()` gives it back, `wanted()` says a chat waits for what this side holds."""

    acquire: Callable[[float], bool]
    release: Callable[[], None]
    wanted: Callable[[], bool]


class Turns:
    def __init__(self) -> None:
        self._state = threading.Condition()
        self._holder: Literal["chat", "background"] | None = None
        self._chats_waiting = 0
        self.chat = Turn(self._acquire_chat, self._release, lambda: False)
        self.background = Turn(self._acquire_background, self._release, self._chat_waiting)

    @property
    def holder(self) -> Literal["chat", "background"] | None:
        """Who has the model now."""
        with self._state:
            return self._holder

    def _acquire_chat(self, timeout: float) -> bool:
        """Waits at most `timeout` for the chats before this one; for background work, until it
        gives way, which `timeout` does not count."""
        left = timeout
        with self._state:
            self._chats_waiting += 1
            try:
                while self._holder is not None:
                    behind_chat = self._holder == "chat"
                    if behind_chat and left <= 0:
                        return False
                    started = time.monotonic()
                    self._state.wait(left if behind_chat else None)
                    if behind_chat:
                        left -= time.monotonic() - started
                self._holder = "chat"
                return True
            finally:
                self._chats_waiting -= 1
                self._state.notify_all()

    def _acquire_background(self, timeout: float) -> bool:
        with self._state:
            free = self._state.wait_for(
                lambda: self._holder is None and not self._chats_waiting, timeout
            )
            if free:
                self._holder = "background"
            return free

    def _release(self) -> None:
        with self._state:
            self._holder = None
            self._state.notify_all()

    def _chat_waiting(self) -> bool:
        with self._state:
            return self._chats_waiting > 0
