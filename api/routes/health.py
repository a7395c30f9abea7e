"""Liveness and dependencies: 200 while serving, 503 when a store is down."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import Svc
from api.schemas import Health

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health)
def health(svc: Svc) -> JSONResponse:
    try:
        lag: int | None = max(follower.lag() for follower in svc.followers)
        event_store = "ok"
    except Exception:
        lag, event_store = None, "down"
    try:
        svc.memory_index.vectors.client.heartbeat()
        vector_store = "ok"
    except Exception:
        vector_store = "down"
    up = event_store == vector_store == "ok"
    body = Health(
        status="ok" if up else "degraded",
        event_store=event_store,
        vector_store=vector_store,
        projection_lag_events=lag,
    )
    return JSONResponse(body.model_dump(), status_code=200 if up else 503)
