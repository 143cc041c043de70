"""Property-based fuzz of the whole OpenAPI schema (schemathesis) against a live server: no 5xx, all conform."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from app.main import create_app
from app.settings import Settings
from tests.redis_server import free_port

# Every check schemathesis has runs, as configured by default, but one: a request the schema allows may still
# be refused with 413/422 by a rule JSON Schema cannot state (a limit from the settings, top_k against the
# model's vocabulary, fields that conflict such as length_penalty without beam_width > 1, and strict types:
# `1.0` is a JSON Schema integer but the API takes only `1`). Such refusals name the rule; any other status
# (400, 415, 5xx) for schema-valid data still fails, but on the OpenAI routes, which answer such a refusal with
# OpenAI's 400 invalid_request_error instead of 422.
CONFIG = SchemathesisConfig.from_str(
    """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "404", "409", "413", "422", "429"]

[[operations]]
include-path-regex = "^/(v1/completions|invocations)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409", "413", "429"]
"""
)
# The schema as the app publishes it at /openapi.json (building the app loads nothing).
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi(), config=CONFIG)

# Small limits keep every fuzzed call cheap; they are published, so going over them is a 4xx like any other.
LIMITS = {
    "max_text_chars": 200,
    "max_tokens_limit": 32,
    "default_max_tokens": 8,
    "max_score_texts": 4,
    "max_beam_width": 4,
    "max_fill_candidates": 10,
    "max_fill_chars": 4,
    "redis_timeout": 5.0,  # patient: this is about the schema, not outages, and the CI box may be busy
}

# Keys on: every call carries a valid one, and schemathesis's own auth check sends bad ones (401 expected).
API_KEY = "fuzz-key-5f0c2a"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def live_url(models_dir: Path, redis_url: str) -> Iterator[str]:
    """The app behind a real uvicorn, in a thread of its own (schemathesis calls it synchronously)."""
    settings = Settings(models_dir=models_dir, redis_url=redis_url, torch_threads=1, api_keys=API_KEY, **LIMITS)
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def session_ids(live_url: str) -> Iterator[str]:
    """Alternately a random id (as generated) and a fresh real session, for the `{session_id}` operations."""

    def ids() -> Iterator[str]:
        while True:
            yield ""  # keep the generated one
            created = httpx.post(f"{live_url}/v1/sessions", json={"prompt": "the "}, headers=AUTH, timeout=30)
            assert created.status_code == 201, created.text
            yield created.json()["id"]

    return ids()


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_operation_conforms_to_its_schema(
    case: schemathesis.Case, live_url: str, session_ids: Iterator[str]
) -> None:
    if "session_id" in (case.path_parameters or {}):
        case.path_parameters["session_id"] = next(session_ids) or case.path_parameters["session_id"]
    case.call_and_validate(base_url=live_url, headers=AUTH, timeout=30)
