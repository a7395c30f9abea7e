"""Per-request metrics and the access log line, keyed by route template (never the raw path,
which holds ids)."""

from __future__ import annotations

import logging
import time

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alma import metrics
from alma.api import logs

log = logging.getLogger("alma.access")


class Observe:
    """Times each request, counts its status, and logs one line with its request id (set by
    `RequestId`, which must wrap this middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = logs.request_id.set(scope.get("state", {}).get("request_id"))
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            method, route = scope["method"], route_of(scope)
            metrics.REQUEST_SECONDS.labels(method, route).observe(elapsed)
            metrics.RESPONSES.labels(method, route, str(status)).inc()
            if status >= 500:
                metrics.SERVER_ERRORS.labels(method, route).inc()
            log.info(
                "%s %s %d",
                method,
                route,
                status,
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 1),
                },
            )
            logs.request_id.reset(token)


def route_of(scope: Scope) -> str:
    """The matched route's template; a request refused before routing is matched here."""
    route = scope.get("route")
    if route is None:
        for candidate in getattr(scope.get("app"), "routes", []):
            if candidate.matches(scope)[0] == Match.FULL:
                route = candidate
                break
    return getattr(route, "path", None) or "unmatched"
