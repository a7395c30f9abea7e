"""Reading ahead (chat/warm.py): an instance asked for is read at once; a burst of asks for one
instance is read at its first and after its last; closing stops the reading under way between
two of its pieces."""

from __future__ import annotations

import threading
import time
from uuid import UUID, uuid4

from alma.chat.warm import Warmer
from alma.llm.client import Messages


class Model:
    """What the warmer reads into: records each opening read, piece by piece."""

    def __init__(self, pieces: int = 1) -> None:
        self.read: list[str] = []
        self.pieces = pieces
        self.pieces_read = 0
        self.reading = threading.Event()
        self.go_on = threading.Event()
        self.go_on.set()

    def opening(self, tenant: str, instance_id: UUID) -> Messages:
        return [{"role": "system", "content": f"{tenant}/{instance_id}"}]

    def warm(self, messages: Messages, wait_s: float, stopping: object) -> int:
        assert callable(stopping)
        read = 0
        for _ in range(self.pieces):
            if stopping():
                break
            self.reading.set()
            self.go_on.wait(30)
            time.sleep(0.01)  # a piece takes the model a moment
            read += 1
            self.pieces_read += 1
        self.read.append(messages[0]["content"])
        return read


def test_a_burst_of_edits_has_an_opening_read_at_its_start_and_after_its_end() -> None:
    model = Model()
    warmer = Warmer(model.opening, model.warm)
    rosa, pedro = uuid4(), uuid4()
    try:
        for _ in range(50):  # a client saving the memory text at every keystroke
            warmer.soon("acme", [rosa])
            time.sleep(0.005)
        warmer.soon("acme", [pedro])
        assert warmer.wait_idle(30)
    finally:
        warmer.close()
    assert sorted(model.read) == sorted([f"acme/{rosa}", f"acme/{rosa}", f"acme/{pedro}"])


def test_closing_stops_a_reading_between_two_pieces() -> None:
    model = Model(pieces=100)
    model.go_on.clear()
    warmer = Warmer(model.opening, model.warm)
    warmer.soon("acme", [uuid4()])
    assert model.reading.wait(30)  # the first piece is being read
    closing = threading.Thread(target=warmer.close)
    closing.start()
    model.go_on.set()
    closing.join(30)
    assert not closing.is_alive()
    assert len(model.read) == 1
    assert model.pieces_read < model.pieces  # it stopped before reading all of them
