"""The bad-input table of docs/errors.md, one row per case: what a client sends and the answer it gets.

Rows already held by tests/app/api/test_limits.py and tests/app/sessions/test_sessions.py (malformed JSON,
invalid UTF-8, NaN/Infinity, lone surrogates, each size limit, unknown model, typo'd
fields, wrong content type, 429) are not repeated here; the table points to them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.helpers import ClientFactory

JSON = {"content-type": "application/json"}


@dataclass(frozen=True)
class Row:
    """One kind of bad input: the request, and the status, error type and words of the answer."""

    what: str
    method: str
    path: str
    status: int
    error_type: str
    needle: str
    body: Any = None  # sent as JSON
    content: bytes | None = None  # sent as these bytes instead
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))


SESSION = "{session}"  # replaced by a real session's id


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncIterator[httpx.AsyncClient]:
    # A patient Redis timeout: these tests are about input, not outages, and the CI box may be busy.
    async with make_client(redis_timeout=5.0) as client:
        yield client


ROWS = [
    # The body as a whole
    Row("empty body", "POST", "/v1/generate", 422, "invalid_request", "body: Field required", content=b""),
    Row("JSON null as the body", "POST", "/v1/generate", 422, "invalid_request", "body: Input should be", content=b"null"),
    Row("a JSON string as the body", "POST", "/v1/score", 422, "invalid_request", "body: ", content=b'"texts"'),
    Row("JSON nested 100000 deep", "POST", "/v1/score", 400, "bad_request", "error parsing the body",
        content=b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    Row("no Content-Type", "POST", "/v1/generate", 415, "unsupported_media_type", "application/json",
        content=b'{"prompt": "hi"}', headers={}),
    Row("Content-Type text/html", "POST", "/v1/sessions", 415, "unsupported_media_type", "'text/html'",
        content=b"{}", headers={"content-type": "text/html"}),
    # Missing fields and wrong types
    Row("missing required field", "POST", "/v1/score", 422, "invalid_request", "texts: Field required", body={}),
    Row("null for a required list", "POST", "/v1/score", 422, "invalid_request", "texts: Input should be a valid list",
        body={"texts": None}),
    Row("missing prompt (completions: OpenAI's 400)", "POST", "/v1/completions", 400, "invalid_request_error", "prompt: Field required",
        body={}),
    Row("missing text (session feed)", "POST", f"/v1/sessions/{SESSION}/feed", 422, "invalid_request",
        "text: Field required", body={}),
    Row("boolean for an integer", "POST", "/v1/generate", 422, "invalid_request", "max_tokens: Input should be a valid integer",
        body={"max_tokens": True}),
    Row("1e2 for an integer", "POST", "/v1/generate", 422, "invalid_request", "max_tokens: Input should be a valid integer",
        content=b'{"max_tokens": 1e2}'),
    Row("string for a boolean", "POST", "/v1/generate", 422, "invalid_request", "stream: Input should be a valid boolean",
        body={"stream": "yes"}),
    Row("object for a string", "POST", "/v1/next-token", 422, "invalid_request", "context: Input should be a valid string",
        body={"context": {"text": "hi"}}),
    Row("query parameter not a number", "GET", f"/v1/sessions/{SESSION}/next-token?top_k=abc", 422, "invalid_request",
        "query.top_k: Input should be a valid integer"),
    # Numbers out of range
    Row("-Infinity", "POST", "/v1/generate", 422, "invalid_request", "temperature: Input should be a finite number",
        content=b'{"temperature": -Infinity}'),
    Row("1e999 (overflows to infinity)", "POST", "/v1/generate", 422, "invalid_request", "temperature: Input should be a finite number",
        content=b'{"temperature": 1e999}'),
    Row("negative max_tokens", "POST", "/v1/generate", 422, "invalid_request", "max_tokens: Input should be greater than or equal to 0",
        body={"max_tokens": -1}),
    Row("max_tokens 10^30", "POST", "/v1/generate", 422, "invalid_request", "is more than max_tokens_limit=",
        body={"max_tokens": 10**30}),
    Row("negative top_k", "POST", "/v1/generate", 422, "invalid_request", "top_k: Input should be greater than or equal to 0",
        body={"top_k": -1}),
    Row("negative top_k (query)", "GET", f"/v1/sessions/{SESSION}/next-token?top_k=-1", 422, "invalid_request",
        "query.top_k: Input should be greater than or equal to 0"),
    Row("top_p above 1", "POST", "/v1/generate", 422, "invalid_request", "top_p: Input should be less than or equal to 1",
        body={"top_p": 1.5}),
    Row("repetition_penalty 0", "POST", "/v1/generate", 422, "invalid_request", "repetition_penalty: Input should be greater than 0",
        body={"repetition_penalty": 0}),
    Row("negative logprobs", "POST", "/v1/generate", 422, "invalid_request", "logprobs: Input should be greater than or equal to 0",
        body={"logprobs": -1}),
    Row("seed above 2^63-1", "POST", "/v1/generate", 422, "invalid_request", "seed: Input should be less than or equal to",
        body={"seed": 2**64}),
    Row("n of 0 (completions: OpenAI's 400)", "POST", "/v1/completions", 400, "invalid_request_error", "n: Input should be greater than or equal to 1",
        body={"prompt": "a", "n": 0}),
    Row("session ttl 0", "POST", "/v1/sessions", 422, "invalid_request", "ttl: Input should be greater than 0",
        body={"ttl": 0}),
    Row("expected_version 0", "POST", f"/v1/sessions/{SESSION}/feed", 422, "invalid_request",
        "expected_version: Input should be greater than or equal to 1", body={"text": "a", "expected_version": 0}),
    Row("stale expected_version", "POST", f"/v1/sessions/{SESSION}/feed", 409, "session_conflict",
        "is at version 1, not the expected 5", body={"text": "a", "expected_version": 5}),
    # Oversize texts and unknown things
    Row("stop string over max_stop_chars", "POST", "/v1/generate", 413, "limit_exceeded", "max_stop_chars=100",
        body={"stop": ["x" * 101]}),
    Row("feed text over max_text_chars", "POST", f"/v1/sessions/{SESSION}/feed", 413, "limit_exceeded",
        "max_text_chars=20000", body={"text": "x" * 20_001}),
    Row("lone surrogate in a session feed", "POST", f"/v1/sessions/{SESSION}/feed", 422, "invalid_request",
        "lone surrogate", content=b'{"text": "\\udfff"}'),
    Row("unknown model (session)", "POST", "/v1/sessions", 404, "not_found", "'gpt-4' is not loaded", body={"model": "gpt-4"}),
    Row("session id of the wrong shape", "POST", "/v1/sessions/..%2E%2E/feed", 404, "not_found", "no session",
        body={"text": "a"}),
    Row("session of another model", "POST", f"/v1/sessions/{SESSION}/feed", 409, "session_conflict",
        "belongs to model 'char', not 'word'", body={"text": "a", "model": "word"}),
    Row("unknown path", "POST", "/v2/generate", 404, "not_found", "Not Found", body={}),
    Row("wrong method", "DELETE", "/v1/score", 405, "method_not_allowed", "Method Not Allowed"),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[row.what for row in ROWS])
async def test_bad_input_gets_a_clear_4xx(client: httpx.AsyncClient, row: Row) -> None:
    path = row.path
    if SESSION in path:
        created = await client.post("/v1/sessions", json={"model": "char"})
        assert created.status_code == 201, created.text
        path = path.replace(SESSION, created.json()["id"])
    if row.content is not None:
        response = await client.request(row.method, path, content=row.content, headers=row.headers)
    elif row.body is not None:
        response = await client.request(row.method, path, json=row.body, headers=row.headers)
    else:
        response = await client.request(row.method, path, headers=row.headers)
    assert response.status_code == row.status, response.text
    error = response.json()["error"]
    assert error["type"] == row.error_type, error
    assert row.needle in error["message"], error["message"]
    assert "Traceback" not in response.text and len(response.content) < 5000  # no echo of a huge input


async def test_a_405_names_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    response = await client.put("/v1/sessions/" + "0" * 32)
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, HEAD"


# Not errors: text a model has no token for is taken, and flagged where the API reports tokens.


async def test_control_characters_are_unknown_tokens_not_errors(client: httpx.AsyncClient) -> None:
    text = "a\x00b\x1b[31mc\x7f"
    scored = (await client.post("/v1/score", json={"model": "char", "texts": [text]})).json()["results"][0]
    unknown = [i for i, t in enumerate(scored["tokens"]) if t["unknown"]]
    assert unknown == [text.index(c) for c in "\x00\x1b[31\x7f"]  # none of these is in the tiny vocabulary
    assert scored["token_count"] == len(text) and {scored["tokens"][i]["token"] for i in unknown} == {"<unk>"}
    generated = await client.post("/v1/generate", json={"prompt": text, "max_tokens": 3, "seed": 1})
    assert generated.status_code == 200 and generated.json()["usage"]["prompt_tokens"] == len(text)


async def test_unknown_characters_and_words_are_flagged(client: httpx.AsyncClient) -> None:
    emoji = (await client.post("/v1/score", json={"model": "char", "texts": ["hi 🙂"]})).json()["results"][0]
    assert [t["unknown"] for t in emoji["tokens"]] == [False, False, False, True]
    words = (await client.post("/v1/score", json={"model": "word", "texts": ["the zebra sat"]})).json()["results"][0]
    assert [(t["token"], t["unknown"]) for t in words["tokens"]] == [("the", False), ("<unk>", True), ("sat", False)]
    tokenized = (await client.post("/v1/tokenize", json={"model": "word", "text": "the zebra"})).json()
    assert [t["unknown"] for t in tokenized["tokens"]] == [False, True]
    assert (await client.post("/v1/next-token", json={"model": "word", "context": "zebra quux"})).status_code == 200
