"""Operations: health (what is up, what is down, how far behind) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from alma import metrics
from alma.api.deps import Svc
from alma.api.errors import ApiError
from alma.api.schemas import Health
from alma.api.services import Services

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(svc: Svc) -> JSONResponse:
    """200 while serving; 503 when the database or the vector store is down. `model` says
    how the last call to the chat model went, and does not change the status: every replica
    shares the model, so taking this one out of rotation would not help."""
    lags = _lags(svc)
    event_store = "down" if lags is None else "ok"
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
        projection_lag_events=max(lags.values()) if lags else None,
        projections=lags,
        model=metrics.model_state(),
    )
    return JSONResponse(body.model_dump(), status_code=200 if up else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
)
def prometheus_metrics(svc: Svc) -> Response:
    """Prometheus text format; off with ALMA_METRICS=false. Unauthenticated, like /health:
    it holds route templates, counts and error codes, nothing of any tenant's."""
    if not svc.settings.metrics:
        raise ApiError(404, "not_found", "metrics are off (ALMA_METRICS=false)")
    for name, lag in (_lags(svc) or {}).items():
        metrics.PROJECTION_LAG.labels(name).set(lag)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _lags(svc: Services) -> dict[str, int] | None:
    """Each projection's lag, or None when the database cannot be reached (the breaker asks
    first, with a timeout of its own, so a down database answers at once)."""
    if svc.breaker is not None and not svc.breaker.probe():
        return None
    try:
        return {follower.name: follower.lag() for follower in svc.followers}
    except Exception:
        return None
