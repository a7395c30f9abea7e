"""alma's Prometheus metrics, one set per process (served by the API at /metrics).

Labels are route templates, error codes, projection names and outcomes, never ids or text, so
the series stay few and hold nothing of a tenant's.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUEST_SECONDS = Histogram(
    "alma_http_request_duration_seconds",
    "HTTP request latency, by route template",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)
RESPONSES = Counter(
    "alma_http_responses_total",
    "HTTP responses, by route and status",
    ["method", "route", "status"],
)
SERVER_ERRORS = Counter(
    "alma_http_server_errors_total", "HTTP responses with a 5xx status", ["method", "route"]
)
ERRORS = Counter("alma_errors_total", "Error answers, by error code", ["code", "status"])
CHAT_SECONDS = Histogram(
    "alma_chat_turn_duration_seconds",
    "A chat turn from the user's message recorded to the reply recorded",
    ["outcome"],
    buckets=_LATENCY_BUCKETS,
)
MODEL_SECONDS = Histogram(
    "alma_model_request_duration_seconds",
    "The chat model's answer time, retries included",
    ["outcome"],
    buckets=_LATENCY_BUCKETS,
)
TOKENS = Counter(
    "alma_model_tokens_total",
    "Tokens sent to and received from the chat model: prompt, completion, and prompt_cached (of "
    "the prompt, what the model server had kept from before and did not read again)",
    ["kind"],
)
for _kind in ("prompt", "completion", "prompt_cached"):
    TOKENS.labels(_kind)  # shown from the start, at 0
PROMPTS_WARMED = Counter(
    "alma_local_model_warmed_tokens_total",
    "Tokens of instances' next prompts that the local model read ahead of their chats, in the "
    "background (chat/warm.py)",
)
PROJECTION_LAG = Gauge(
    "alma_projection_lag_events", "Events not yet processed, by projection", ["projection"]
)
SKIPPED_EVENTS = Gauge(
    "alma_projection_skipped_events",
    "Events a projection could not apply and went on without, until it is rebuilt",
    ["projection"],
)
MEMORIES_UNAVAILABLE = Counter(
    "alma_chat_memories_unavailable_total",
    "Chat turns answered without retrieved memories because the vector store was down",
)
MEMORIES_BEHIND = Counter(
    "alma_chat_memories_behind_total",
    "Chat turns answered before the memory index held the instance's latest write "
    "(ALMA_CHAT_MEMORY_WAIT_S passed)",
)
MEMORY_EXTRACTIONS_DROPPED = Counter(
    "alma_memory_extractions_dropped_total",
    "Answers of the memory process's model dropped whole, nothing of them written: empty, not "
    "JSON, the wrong shape, too many operations, or the model refused the request; and "
    "(duplicate) memories left out because the instance already had one that says it",
    ["reason"],
)
MEMORY_FORMATION_DEFERRED = Counter(
    "alma_memory_formation_deferred_total",
    "Times the memory process tried a window again later because chats come first: it gave "
    "the local model up to a chat mid-answer (gave_way), or chats kept it busy (busy)",
    ["reason"],
)

MEMORY_FORMATION_FAILED = Counter(
    "alma_memory_formation_failed_windows_total",
    "Windows the memory process could not form yet and tries again after a pause: the model "
    "answered 429 (rate_limited), failed or could not be reached (unavailable)",
    ["reason"],
)
MEMORY_FORMATION_IN_FLIGHT = Gauge(
    "alma_memory_formation_in_flight", "Model calls the memory process has in flight now"
)
MEMORY_FORMATION_ALLOWED = Gauge(
    "alma_memory_formation_allowed_in_flight",
    "Model calls the memory process allows itself at once (lowered by 429s, raised by answers)",
)
PROJECTION_LAG_SECONDS = Gauge(
    "alma_projection_lag_seconds",
    "How long the oldest event some partition has not processed has waited, by projection",
    ["projection"],
)
PARTITION_LAG = Gauge(
    "alma_projection_partition_lag_events",
    "Events not yet processed, by projection and partition",
    ["projection", "partition"],
)
PARTITION_LAG_SECONDS = Gauge(
    "alma_projection_partition_lag_seconds",
    "How long the oldest event a partition has not processed has waited",
    ["projection", "partition"],
)
PARTITION_OWNER = Gauge(
    "alma_projection_partition_owned",
    "1 for the worker that owns each partition now (none: no worker does)",
    ["projection", "partition", "worker"],
)

_model = {"state": "unknown"}
_model_lock = threading.Lock()


def model_called(ok: bool) -> None:
    """How the last call to the chat model went, for /health."""
    with _model_lock:
        _model["state"] = "ok" if ok else "failing"


def model_state() -> str:
    with _model_lock:
        return _model["state"]
