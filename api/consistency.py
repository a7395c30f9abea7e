"""Read-your-writes for read models: wait, bounded, until a read model has processed every
event written before the request; answer 503 rather than serve a stale view."""

from __future__ import annotations

from dataclasses import dataclass

from alma.api.errors import ApiError
from alma.projections import Follower


@dataclass(frozen=True)
class CaughtUp:
    """Called, returns once the follower's read model has every event written so far."""

    follower: Follower
    timeout: float

    def __call__(self) -> None:
        written = self.follower.app.recorder.max_notification_id() or 0
        if not self.follower.wait(written, self.timeout):
            raise ApiError(
                503,
                "read_model_behind",
                f"the {self.follower.name} read model is catching up; try again",
                {"lag_events": max(0, written - self.follower.position())},
                headers={"Retry-After": "1"},
            )
