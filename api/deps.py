"""Typed dependencies shared by the routes: services, the caller, the actor, If-Match, paging."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from alma.api.errors import ApiError
from alma.api.security import RateLimiter
from alma.api.services import Services
from alma.domain import Actor

_bearer = HTTPBearer(auto_error=False, description="An API key from `alma keys create`")


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


Svc = Annotated[Services, Depends(_services)]


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_id: str
    request_id: str

    @property
    def actor(self) -> Actor:
        return Actor(self.tenant, self.key_id, self.request_id)


async def _caller(
    request: Request,
    services: Svc,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'")
    key = await run_in_threadpool(services.app.authenticate, credentials.credentials)
    if key is None:
        raise ApiError(401, "unauthorized", "the API key is unknown or revoked")
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    wait = limiter.take(str(key.id)) if limiter else None
    if wait is not None:
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests for this API key; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    return Caller(key.tenant, str(key.id), request.state.request_id)


CurrentCaller = Annotated[Caller, Depends(_caller)]


def _expected_version(
    if_match: Annotated[
        str | None,
        Header(description="The version you last saw; a stale one answers 409"),
    ] = None,
) -> int | None:
    if if_match is None:
        return None
    value = if_match.strip().removeprefix("W/").strip('"')
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise ApiError(400, "bad_if_match", "If-Match must be a version number, like 3")
    return int(value)


ExpectedVersion = Annotated[int | None, Depends(_expected_version)]
Erase = Annotated[
    bool,
    Query(
        description="Hard delete: destroy the key its events are encrypted with, so its text "
        "can never be read again, by any endpoint or from the database files"
    ),
]
Limit = Annotated[int, Query(ge=1, le=500, description="Items per page")]


@dataclass(frozen=True)
class PointInTime:
    version: int | None
    at: datetime | None


def _point_in_time(
    version: Annotated[int | None, Query(ge=1, description="State at this version")] = None,
    at: Annotated[
        datetime | None, Query(description="State at this time (ISO 8601; UTC if no offset)")
    ] = None,
) -> PointInTime:
    if version is not None and at is not None:
        raise ApiError(400, "bad_request", "give either version or at, not both")
    return PointInTime(version, as_utc(at))


def as_utc(moment: datetime | None) -> datetime | None:
    """Times without an offset are taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment


AsOf = Annotated[PointInTime, Depends(_point_in_time)]
