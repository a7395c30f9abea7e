"""Instances' next prompts read ahead of their chats, in the background (the local model).

llama.cpp reads a conversation's first prompt whole before its first word: ~650 tokens keep the
default 1.5B busy 7-14 s on two cores. Later turns start fast because it keeps what it read and
reads again only what follows the first difference (chat/prompt.py puts what changes late). The
`Warmer` has the start of an instance's next prompt read before the chat asks: its persona,
memory text and conversation so far (`Chat.opening`), when `alma serve` starts (the instances
chatted with last) and when a character or an instance is created or edited; asked for again
within a second, a second after the last ask (a burst of edits is read at its first and after
its last: read at every edit, an edit cost the server twice the CPU). It takes the model as
memory formation does: after chats, giving way to them (`LocalModelServer.warm`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from uuid import UUID

from alma.llm.client import Messages

log = logging.getLogger(__name__)
# The instances whose prompts are kept ready at most: the latest asked for (llama.cpp's prompt
# cache, 256 MiB, holds about 14 openings of ~650 tokens of the 1.5B).
WARM_INSTANCES = 8

# How long a reading waits for chats to leave the model free, per piece.
WARM_WAIT_S = 600.0
# An instance asked for again within this long of its last ask is read this long after the
# last: a burst of edits (a client saving the memory text at every change) has its opening read
# at the first and after the last, not at each.
QUIET_S = 1.0
Opening = Callable[[str, UUID], Messages]


class Warmer:
    """Reads instances' openings into the model's prompt cache on a thread of its own, the
    latest asked for first; at most `limit` wait, the oldest requests dropped past it."""

    def __init__(
        self,
        opening: Opening,
        warm: Callable[[Messages, float, Callable[[], bool]], int],
        limit: int = WARM_INSTANCES,
    ) -> None:
        """`opening(tenant, instance_id)`: the start of the instance's next prompt; `warm`
        reads messages into the cache, waiting at most `wait_s` a piece for the model and
        stopping between two pieces once `stopping()`, and says how many tokens it read."""
        self.opening = opening
        self.warm = warm
        self.limit = limit
        # When each is due to be read, the latest asked for last.
        self._pending: OrderedDict[tuple[str, UUID], float] = OrderedDict()
        # When each instance was last asked for, within the last QUIET_S.
        self._asked: dict[tuple[str, UUID], float] = {}
        self._busy = False
        self._stopped = False
        self._state = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="alma-warmer", daemon=True)
        self._thread.start()

    def soon(self, tenant: str, instance_ids: Iterable[UUID]) -> None:
        """Read these instances' openings, the last one given first."""
        with self._state:
            now = time.monotonic()
            self._asked = {k: t for k, t in self._asked.items() if now - t < QUIET_S}
            for instance_id in instance_ids:
                key = (tenant, instance_id)
                self._pending.pop(key, None)
                self._pending[key] = now + QUIET_S if key in self._asked else now
                self._asked[key] = now
            while len(self._pending) > self.limit:
                self._pending.popitem(last=False)
            self._state.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing waits and nothing is being read; False when `timeout` passes first."""
        with self._state:
            return self._state.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Stops, the reading under way between two of its pieces, and waits for that."""
        with self._state:
            self._stopped = True
            self._pending.clear()
            self._state.notify_all()
        self._thread.join(timeout)

    def _is_stopped(self) -> bool:
        return self._stopped

    def _next(self) -> tuple[str, UUID] | None:
        """The latest asked for of the instances due, once there is one; None once stopped.
        Called holding the state's lock."""
        while not self._stopped:
            now = time.monotonic()
            due = [key for key, when in self._pending.items() if when <= now]
            if due:
                del self._pending[due[-1]]
                return due[-1]
            first = min(self._pending.values(), default=None)
            self._state.wait(None if first is None else first - now)
        return None

    def _run(self) -> None:
        while True:
            with self._state:
                self._busy = False
                self._state.notify_all()
                chosen = self._next()
                if chosen is None:
                    return
                tenant, instance_id = chosen
                self._busy = True
            try:
                read = self.warm(self.opening(tenant, instance_id), WARM_WAIT_S, self._is_stopped)
                log.debug("read %d tokens of instance %s's next prompt", read, instance_id)
            except Exception as error:  # deleted since, the model gone: its chat reads it all
                log.info("could not read instance %s's next prompt ahead: %s", instance_id, error)
