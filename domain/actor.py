"""Who caused an event: the tenant, the API key and the request, recorded on every event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import Transcoding


@dataclass(frozen=True)
class Actor:
    tenant: str
    key_id: str
    request_id: str

    def as_dict(self) -> dict[str, str]:
        return {"tenant": self.tenant, "key_id": self.key_id, "request_id": self.request_id}


class ActorAsDict(Transcoding):
    type = Actor
    name = "actor"

    def encode(self, obj: Actor) -> dict[str, str]:
        return obj.as_dict()

    def decode(self, data: Any) -> Actor:
        return Actor(**data)
