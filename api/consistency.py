"""Read-your-writes for read models: wait, bounded, until a read model has processed every
event written before the request; answer 503 rather than serve a stale view."""

from __future__ import annotations

from alma.api.errors import ApiError
from alma.api.services import Services
from alma.projections import Follower


def caught_up(services: Services, follower: Follower, timeout: float) -> None:
    written = services.app.recorder.max_notification_id() or 0
    if not follower.wait(written, timeout):
        raise ApiError(
            503,
            "read_model_behind",
            f"the {follower.name} read model is catching up; try again",
            {"lag_events": max(0, written - follower.position())},
            headers={"Retry-After": "1"},
        )
