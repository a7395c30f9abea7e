"""Events a projection could not apply and went on without: kept in SQL beside the read models,
so every process (and /health) sees them across restarts, until a rebuild of that projection."""

from __future__ import annotations

from dataclasses import dataclass

from alma.stores.sql import SqlStore

_TABLE = """CREATE TABLE IF NOT EXISTS projection_skips (
    projection TEXT NOT NULL, position BIGINT NOT NULL, originator_id TEXT NOT NULL,
    error_type TEXT NOT NULL, error TEXT NOT NULL, PRIMARY KEY (projection, position))"""
_MAX_ERROR = 2_000


@dataclass(frozen=True)
class Skipped:
    projection: str
    position: int
    originator_id: str  # the instance, character or memory the event belongs to
    error_type: str
    error: str


class Skips:
    def __init__(self, store: SqlStore) -> None:
        self.store = store
        with store.transaction() as cursor:
            cursor.execute(_TABLE)

    def record(self, skipped: Skipped) -> None:
        with self.store.transaction() as cursor:
            cursor.execute(
                "INSERT INTO projection_skips (projection, position, originator_id, error_type, "
                "error) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (projection, position) DO UPDATE "
                "SET error_type = excluded.error_type, error = excluded.error",
                (
                    skipped.projection,
                    skipped.position,
                    skipped.originator_id,
                    skipped.error_type,
                    _storable(skipped.error[:_MAX_ERROR]),
                ),
            )

    def all(self) -> list[Skipped]:
        rows = self.store.query(
            "SELECT projection, position, originator_id, error_type, error FROM projection_skips "
            "ORDER BY projection, position"
        )
        return [Skipped(str(p), int(n), str(o), str(t), str(e)) for p, n, o, t, e in rows]

    def clear(self, projection: str) -> None:
        """Forgets a projection's skips: before a rebuild, which meets those events again."""
        with self.store.transaction() as cursor:
            cursor.execute("DELETE FROM projection_skips WHERE projection = %s", (projection,))

    def close(self) -> None:
        self.store.close()


def _storable(text: str) -> str:
    """An error's text may quote what could not be stored: no NUL, no lone surrogate."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
