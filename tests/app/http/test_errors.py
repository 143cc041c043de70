"""One error body: a JSON answer and a stream's error event carry the same `{"error": {...}}`."""

from __future__ import annotations

import httpx
import pytest

from app.completions import serving as completions_serving
from app.completions import stream as completions_stream
from app.errors import EngineClosed, ServiceError, SessionConflict, StoreUnavailable
from app.sessions.serving import SessionService
from tests.helpers import parse_sse

ERRORS = [
    SessionConflict("session changed during this call (now version 7); nothing was saved", reason="version", version=7),
    StoreUnavailable("session store redis://x is unavailable: connection refused"),
    EngineClosed("the engine is shutting down"),
]
EXPECTED = [
    {"type": "session_conflict", "message": ERRORS[0].message, "reason": "version", "version": 7},
    {"type": "unavailable", "message": ERRORS[1].message},
    {"type": "unavailable", "message": ERRORS[2].message},
]
STATUSES = [409, 503, 503]


@pytest.mark.parametrize(("error", "expected", "status"), list(zip(ERRORS, EXPECTED, STATUSES, strict=True)))
async def test_a_session_generation_error_reads_the_same_whole_and_streamed(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, error: ServiceError, expected: dict, status: int
) -> None:
    """The save after the generation fails: a whole answer says so with a status, a stream with an `error` event."""
    created = await client.post("/v1/sessions", json={"prompt": "ab"})
    path = f"/v1/sessions/{created.json()['id']}/generate"

    async def failing_save(*args: object) -> None:
        raise error

    monkeypatch.setattr(SessionService, "save_generation", failing_save)
    whole = await client.post(path, json={"max_tokens": 2, "seed": 1})
    streamed = await client.post(path, json={"max_tokens": 2, "seed": 1, "stream": True})
    assert whole.status_code == status and whole.json() == {"error": expected}
    assert streamed.status_code == 200  # the stream was open before the error
    events = parse_sse(streamed.text)
    assert [name for name, _ in events] == ["token", "token", "error"]
    assert events[-1][1] == whole.json()


@pytest.mark.parametrize(("error", "expected", "status"), list(zip(ERRORS, EXPECTED, STATUSES, strict=True)))
async def test_a_completion_error_reads_the_same_whole_and_streamed(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, error: ServiceError, expected: dict, status: int
) -> None:
    """OpenAI's stream has no event names: the error is a data event, with the JSON answer's body."""

    async def failing(*args: object) -> None:
        raise error

    monkeypatch.setattr(completions_serving, "complete", failing)
    monkeypatch.setattr(completions_stream.CompletionStream, "finish", failing)
    body = {"prompt": "a", "max_tokens": 1, "seed": 1}
    whole = await client.post("/v1/completions", json=body)
    streamed = await client.post("/v1/completions", json={**body, "stream": True})
    assert whole.status_code == status and whole.json() == {"error": expected}
    events = parse_sse(streamed.text)
    assert events[-1] == ("message", whole.json())  # and no [DONE]


async def test_a_bug_in_a_stream_reads_as_the_500_body(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(completions_stream.CompletionStream, "finish", broken)
    streamed = await client.post("/v1/completions", json={"prompt": "a", "max_tokens": 1, "stream": True})
    events = parse_sse(streamed.text)
    assert events[-1] == ("message", {"error": {"type": "internal_error", "message": "internal server error"}})
