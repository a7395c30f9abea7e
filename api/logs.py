"""Logging for `alma serve` and `alma worker`: one JSON object per line (ALMA_LOG_FORMAT=json)
or plain text, each line carrying the id of the request it belongs to.

The request id is the one the events record (`actor.request_id`), so a log line leads to the
events the request caused and back. Lines say what happened, never keys, prompts or memory text.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# Extra fields a record may carry (logger.info(..., extra={...})) that go into the JSON line.
_FIELDS = ("route", "method", "status", "duration_ms")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id.get(),
        }
        for name in _FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class _WithRequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or "-"
        return True


def configure(kind: Literal["json", "text"]) -> None:
    """Root logging to stderr at INFO; uvicorn's loggers go through it (its access log is off:
    alma's own access line, with the route template and request id, replaces it)."""
    handler = logging.StreamHandler()
    handler.addFilter(_WithRequestId())
    if kind == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Their INFO narrates a start (the server process, the model file loaded, each request the
    # Chroma server's client makes) that `alma serve` sums up in its own lines; their warnings
    # and errors still come through.
    for name in ("uvicorn.error", "sentence_transformers", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
