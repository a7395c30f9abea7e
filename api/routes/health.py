"""Liveness and dependencies: 200 while serving, 503 when the event store is down."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import Svc
from api.schemas import Health

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health)
def health(svc: Svc) -> JSONResponse:
    try:
        lag: int | None = svc.listings.lag()
        event_store = "ok"
    except Exception:
        lag, event_store = None, "down"
    body = Health(
        status="ok" if event_store == "ok" else "degraded",
        event_store=event_store,
        vector_store="not_configured",
        projection_lag_events=lag,
    )
    return JSONResponse(body.model_dump(), status_code=200 if event_store == "ok" else 503)
