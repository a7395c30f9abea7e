"""Operations: health (what is up, what is down, how far behind) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from alma import metrics
from alma.api.deps import AppSettings, ChatModelNow, Probes
from alma.api.errors import ApiError
from alma.api.schemas import ChatModelHealth, Health, PartitionHealth, SkippedEvent

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(probes: Probes, chat_model: ChatModelNow) -> JSONResponse:
    """200 while serving; 503 when the database or the vector store is down. `model` says
    how the last call to the chat model went, `chat_model` which model answers and whether it
    can; events a projection skipped, or a chat model that cannot answer, make the status
    `degraded`; neither changes the code: every replica shares the model and the events, so
    taking this one out of rotation would not help."""
    lags = probes.lags()
    partitions = probes.partitions() if lags is not None else None
    skipped = probes.skipped() if lags is not None else None
    event_store = "down" if lags is None else "ok"
    vector_store = "ok" if probes.vector_store_up() else "down"
    up = event_store == vector_store == "ok"
    body = Health(
        status="ok" if up and not skipped and chat_model.available else "degraded",
        event_store=event_store,
        vector_store=vector_store,
        projection_lag_events=max(lags.values()) if lags else None,
        projections=lags,
        projection_lag_seconds=None
        if partitions is None
        else {
            name: max((p.lag_seconds for p in ps), default=0.0) for name, ps in partitions.items()
        },
        partitions=None
        if partitions is None
        else {
            name: [PartitionHealth.model_validate(p, from_attributes=True) for p in ps]
            for name, ps in partitions.items()
        },
        model=metrics.model_state(),
        chat_model=ChatModelHealth.model_validate(chat_model, from_attributes=True),
        skipped_events=None if skipped is None else [SkippedEvent.of(s) for s in skipped],
    )
    return JSONResponse(body.model_dump(), status_code=200 if up else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
)
def prometheus_metrics(settings: AppSettings, probes: Probes) -> Response:
    """Prometheus text format; off with ALMA_METRICS=false. Unauthenticated, like /health:
    it holds route templates, counts and error codes, nothing of any tenant's."""
    if not settings.metrics:
        raise ApiError(404, "not_found", "metrics are off (ALMA_METRICS=false)")
    lags = probes.lags() or {}
    for name, lag in lags.items():
        metrics.PROJECTION_LAG.labels(name).set(lag)
    metrics.PARTITION_OWNER.clear()  # owners come and go: only today's are shown
    for name, partitions in (probes.partitions() or {}).items():
        seconds = max((p.lag_seconds for p in partitions), default=0.0)
        metrics.PROJECTION_LAG_SECONDS.labels(name).set(seconds)
        for p in partitions:
            label = str(p.partition)
            metrics.PARTITION_LAG.labels(name, label).set(p.lag_events)
            metrics.PARTITION_LAG_SECONDS.labels(name, label).set(p.lag_seconds)
            if p.owner is not None:
                metrics.PARTITION_OWNER.labels(name, label, p.owner).set(1)
    skipped = probes.skipped()
    if skipped is not None:
        for name in lags:
            count = sum(1 for s in skipped if s.projection == name)
            metrics.SKIPPED_EVENTS.labels(name).set(count)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
