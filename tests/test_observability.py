"""What an operator sees of a real `alma serve`: Prometheus metrics at /metrics and JSON log
lines that carry the same request id as the events the request caused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from alma.settings import Settings
from tests.openai_stub import OpenAIStub
from tests.test_faults import serving


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample, its labels matched exactly (in any order; none: a sample with
    none)."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match[1] or ""))
            if found == labels:
                return float(match[2])
    raise AssertionError(f"no sample {name}{labels}")


@pytest.mark.slow
def test_metrics_and_json_logs_of_a_running_server(tmp_path: Path, openai_stub: OpenAIStub) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")  # type: ignore[call-arg]
    env = {
        "ALMA_LOG_FORMAT": "json",
        "OPENAI_API_KEY": "sk-test-alma-0123456789",
        "OPENAI_BASE_URL": openai_stub.base_url,
        "ALMA_MEMORY_FORMATION": "false",
    }
    with serving(settings, tmp_path, env) as (http, _):
        created = http.post(
            "/v1/characters",
            json={"name": "Doña Rosa", "description": "Curandera"},
            headers={"X-Request-ID": "obs-request-1"},
        )
        assert created.status_code == 201
        character = created.json()["id"]
        instance = http.post(
            f"/v1/characters/{character}/instances", json={"name": "Rosa", "memory": ""}
        ).json()["id"]
        chat = http.post(f"/v1/instances/{instance}/chat", json={"message": "Hola"})
        assert chat.status_code == 200, chat.text
        assert http.get(f"/v1/characters/{instance}").status_code == 404

        scraped = httpx.get(f"{http.base_url}/metrics", timeout=10)  # no key needed
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        text = scraped.text
        chat_route = {"method": "POST", "route": "/v1/instances/{instance_id}/chat"}
        assert _metric(text, "alma_http_request_duration_seconds_count", **chat_route) == 1
        assert _metric(text, "alma_http_responses_total", **chat_route, status="200") == 1
        assert _metric(text, "alma_chat_turn_duration_seconds_count", outcome="ok") == 1
        assert _metric(text, "alma_model_request_duration_seconds_count", outcome="ok") == 1
        usage = chat.json()["usage"]
        assert _metric(text, "alma_model_tokens_total", kind="prompt") == usage["prompt_tokens"]
        completion = usage["completion_tokens"]
        assert _metric(text, "alma_model_tokens_total", kind="completion") == completion
        assert _metric(text, "alma_errors_total", code="not_found", status="404") == 1
        for projection in ("listings", "memory-index", "conversation", "memory-audit"):
            assert _metric(text, "alma_projection_lag_events", projection=projection) >= 0
        assert instance not in text and character not in text  # templates, never ids

        events = http.get(f"/v1/characters/{character}/events").json()["items"]
        assert events[0]["actor"]["request_id"] == "obs-request-1"

    lines = [json.loads(line) for line in (tmp_path.glob("serve-*.log").__next__()).open()]
    for line in lines:
        assert {"time", "level", "logger", "message", "request_id"} <= set(line)
    [access] = [line for line in lines if line.get("request_id") == "obs-request-1"]
    assert access["route"] == "/v1/characters"
    assert (access["method"], access["status"]) == ("POST", 201)
    assert access["duration_ms"] >= 0
    assert access["level"] == "INFO" and access["logger"] == "alma.access"
    assert all("sk-test-alma" not in json.dumps(line) for line in lines)
