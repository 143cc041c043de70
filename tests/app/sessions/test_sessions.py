"""Sessions over HTTP (ASGI) on a real Redis: pieces vs one piece, generation, fork, races, TTL, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import make_checkpoint
from tests.helpers import SESSION_CHAR_TEXT, ClientFactory, call, create, cut, feed_pieces, parse_sse

WORD_TEXT = "the cat sat on the mat\nthe dog sat on a zebra log\na cat and a dog"


@pytest.fixture(params=["float32", "bfloat16"])
async def client(make_client: ClientFactory, request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """Every session invariant in both precisions (RNNLM_DTYPE): pieces vs whole, fork, races..."""
    async with make_client(default_model="char", max_text_chars=500, dtype=request.param) as client:
        yield client


@pytest.mark.parametrize(("model", "text"), [("char", SESSION_CHAR_TEXT), ("word", WORD_TEXT)])
async def test_feeding_in_pieces_matches_scoring_the_whole_text(
    client: httpx.AsyncClient, model: str, text: str
) -> None:
    whole = await call(client, "POST", "/v1/score", json={"model": model, "texts": [text], "bos": True})
    expected = whole["results"][0]["tokens"]
    # One piece; two pieces cut inside a word; many pieces of 3 characters (words split everywhere).
    for pieces in ([text], [text[:9], text[9:]], cut(text, 3), cut(text, 1)):
        got = await feed_pieces(client, model, pieces)
        assert [t["id"] for t in got] == [t["id"] for t in expected]
        assert [t["unknown"] for t in got] == [t["unknown"] for t in expected]
        assert [t["logprob"] for t in got] == pytest.approx([t["logprob"] for t in expected], abs=1e-5)


async def test_a_word_split_across_feeds_stays_pending(client: httpx.AsyncClient) -> None:
    session_id = await create(client, model="word", prompt="the ca")
    info = await call(client, "GET", f"/v1/sessions/{session_id}")
    assert (info["token_count"], info["pending_text"]) == (1, "ca")
    fed = await call(client, "POST", f"/v1/sessions/{session_id}/feed", json={"text": "t sat\non"})
    assert [t["token"] for t in fed["tokens"]] == ["cat", "sat", "<eos>"]
    assert fed["session"]["pending_text"] == "on"
    # next-token answers as if "on" were a whole word, but leaves it pending.
    nxt = await call(client, "GET", f"/v1/sessions/{session_id}/next-token", params={"top_k": 0})
    stateless = await call(
        client, "POST", "/v1/next-token", json={"model": "word", "context": "the cat sat\non", "top_k": None}
    )
    assert nxt["context_tokens"] == stateless["context_tokens"] == 5
    assert [e["prob"] for e in nxt["top"]] == pytest.approx([e["prob"] for e in stateless["top"]], abs=1e-6)
    assert sum(e["prob"] for e in nxt["top"]) == pytest.approx(1.0)
    assert nxt["session"]["pending_text"] == "on" and nxt["session"]["version"] == fed["session"]["version"]


async def test_flush_and_generate_end_the_pending_word(client: httpx.AsyncClient) -> None:
    flushed = await call(client, "POST", "/v1/sessions", 201, json={"model": "word", "prompt": "the ca", "flush": True})
    assert (flushed["token_count"], flushed["pending_text"]) == (2, "")
    session_id = await create(client, model="word", prompt="the cat")
    generated = await call(client, "POST", f"/v1/sessions/{session_id}/generate", json={"max_tokens": 3, "seed": 1})
    assert generated["session"]["pending_text"] == ""
    assert generated["usage"]["prompt_tokens"] == 2  # "cat" was fed before sampling
    assert generated["session"]["token_count"] == 2 + generated["usage"]["completion_tokens"]


async def test_generate_continues_the_session_exactly_like_generate_on_its_text(client: httpx.AsyncClient) -> None:
    prompt = "hello wor"
    sampling = {"max_tokens": 24, "seed": 7, "temperature": 0.9, "repetition_penalty": 1.3}
    session_id = await create(client, model="char", prompt=prompt)
    generated = await call(client, "POST", f"/v1/sessions/{session_id}/generate", json=sampling)
    stateless = await call(client, "POST", "/v1/generate", json={"model": "char", "prompt": prompt, **sampling})
    assert generated["text"] == stateless["text"] and len(generated["tokens"]) == 24
    assert generated["session"]["token_count"] == len(prompt) + 24
    assert generated["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 24, "total_tokens": 33}
    # The state advanced over the generated text: what is fed next is scored after it.
    fed = await call(client, "POST", f"/v1/sessions/{session_id}/feed", json={"text": "fox"})
    whole = await call(
        client, "POST", "/v1/score", json={"model": "char", "texts": [prompt + generated["text"] + "fox"]}
    )
    tail = whole["results"][0]["tokens"][-3:]
    assert [t["logprob"] for t in fed["tokens"]] == pytest.approx([t["logprob"] for t in tail], abs=1e-5)


async def test_streamed_session_generation_matches_the_whole_answer(client: httpx.AsyncClient) -> None:
    session_id = await create(client, model="word", prompt="the cat ")
    twin = (await call(client, "POST", f"/v1/sessions/{session_id}/fork", 201))["id"]
    sampling = {"max_tokens": 6, "seed": 3, "stop_at_eos": False}
    whole = await call(client, "POST", f"/v1/sessions/{twin}/generate", json=sampling)
    response = await client.post(f"/v1/sessions/{session_id}/generate", json={**sampling, "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    assert [name for name, _ in events] == ["token"] * 6 + ["done"]
    assert "".join(data["text"] for _, data in events[:-1]) == whole["text"]
    done = events[-1][1]
    assert done["finish_reason"] == "length" and done["session"]["version"] == 2
    assert done["session"]["token_count"] == whole["session"]["token_count"] == 8


async def test_fork_branches_diverge_independently(client: httpx.AsyncClient) -> None:
    original = await create(client, model="char", prompt="the ")
    branch = (await call(client, "POST", f"/v1/sessions/{original}/fork", 201, json={"ttl": 120}))["id"]
    assert branch != original
    await call(client, "POST", f"/v1/sessions/{original}/feed", json={"text": "fox"})
    await call(client, "POST", f"/v1/sessions/{branch}/feed", json={"text": "dog jumps"})
    for session_id, context in ((original, "the fox"), (branch, "the dog jumps")):
        nxt = await call(client, "GET", f"/v1/sessions/{session_id}/next-token", params={"top_k": 5})
        expected = await call(client, "POST", "/v1/next-token", json={"context": context, "top_k": 5})
        assert [e["id"] for e in nxt["top"]] == [e["id"] for e in expected["top"]]
        assert [e["prob"] for e in nxt["top"]] == pytest.approx([e["prob"] for e in expected["top"]], abs=1e-6)
        assert nxt["session"]["token_count"] == len(context)
    assert (await call(client, "GET", f"/v1/sessions/{branch}"))["ttl"] == 120


async def test_concurrent_feeds_never_lose_an_update(client: httpx.AsyncClient) -> None:
    session_id = await create(client, model="char")
    path = f"/v1/sessions/{session_id}/feed"
    # Without retries: each feed either lands or gets 409; the session holds exactly the ones that landed.
    answers = await asyncio.gather(*(client.post(path, json={"text": "ab"}) for _ in range(8)))
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) <= {200, 409} and 200 in statuses
    landed = statuses.count(200)
    conflict = next(r.json() for r in answers if r.status_code == 409) if 409 in statuses else None
    info = await call(client, "GET", f"/v1/sessions/{session_id}")
    assert (info["token_count"], info["version"]) == (2 * landed, 1 + landed)

    # With retries on 409 every feed lands once.
    retries = 0

    async def feed_until_it_lands() -> None:
        nonlocal retries
        while (response := await client.post(path, json={"text": "ab"})).status_code == 409:
            retries += 1
        assert response.status_code == 200, response.text

    await asyncio.gather(*(feed_until_it_lands() for _ in range(8)))
    info = await call(client, "GET", f"/v1/sessions/{session_id}")
    assert (info["token_count"], info["version"]) == (2 * landed + 16, 1 + landed + 8)
    assert conflict is None or conflict["error"]["type"] == "session_conflict"
    assert landed < 8 or retries > 0, "the feeds never raced"


async def test_expected_version(client: httpx.AsyncClient) -> None:
    session_id = await create(client, model="char", prompt="ab")
    await call(client, "POST", f"/v1/sessions/{session_id}/feed", json={"text": "c", "expected_version": 1})
    stale = await call(
        client, "POST", f"/v1/sessions/{session_id}/feed", 409, json={"text": "d", "expected_version": 1}
    )
    assert stale["error"]["type"] == "session_conflict" and stale["error"]["version"] == 2
    assert "version 2" in stale["error"]["message"]


async def test_ttl_slides_with_use_then_expires(client: httpx.AsyncClient) -> None:
    session_id = await create(client, model="char", ttl=0.6)
    for _ in range(3):  # 1.2 s of life in all, twice the TTL, kept alive by use
        await asyncio.sleep(0.4)
        await call(client, "POST", f"/v1/sessions/{session_id}/feed", json={"text": "a"})
    await asyncio.sleep(0.9)
    gone = await call(client, "GET", f"/v1/sessions/{session_id}", 404)
    assert gone["error"]["type"] == "not_found" and session_id in gone["error"]["message"]
    await call(client, "POST", f"/v1/sessions/{session_id}/feed", 404, json={"text": "a"})


async def test_delete(client: httpx.AsyncClient) -> None:
    session_id = await create(client)
    await call(client, "DELETE", f"/v1/sessions/{session_id}", 204)
    await call(client, "DELETE", f"/v1/sessions/{session_id}", 404)
    await call(client, "GET", f"/v1/sessions/{session_id}/next-token", 404)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needle"),
    [
        ("GET", "/v1/sessions/not-a-session", None, 404, "no session"),
        ("GET", "/v1/sessions/" + "0" * 32, None, 404, "no session"),
        ("POST", "/v1/sessions", {"model": "nope"}, 404, "'nope' is not loaded"),
        ("POST", "/v1/sessions", {"ttl": 10**9}, 422, "max_session_ttl"),
        ("POST", "/v1/sessions", {"ttl": -1}, 422, "ttl"),
        ("POST", "/v1/sessions", {"prompt": "x" * 501}, 413, "max_text_chars"),
        ("POST", "/v1/sessions", {"colour": "red"}, 422, "colour"),
    ],
)
async def test_bad_requests_get_clear_errors(
    client: httpx.AsyncClient, method: str, path: str, body: Any, status: int, needle: str
) -> None:
    error = await call(client, method, path, status, json=body)
    assert needle in error["error"]["message"]


async def test_calls_on_a_session_are_checked(client: httpx.AsyncClient) -> None:
    session_id = await create(client, model="char")
    base = f"/v1/sessions/{session_id}"
    other = await call(client, "POST", f"{base}/feed", 409, json={"text": "a", "model": "word"})
    assert "belongs to model 'char', not 'word'" in other["error"]["message"]
    await call(client, "GET", f"{base}/next-token", 409, params={"model": "word"})
    await call(client, "POST", f"{base}/feed", 413, json={"text": "x" * 501})
    await call(client, "POST", f"{base}/feed", 422, json={})
    await call(client, "POST", f"{base}/generate", 422, json={"max_tokens": 10**6})
    await call(client, "GET", f"{base}/next-token", 422, params={"top_k": 10**6})
    info = await call(client, "GET", base)
    assert (info["version"], info["token_count"]) == (1, 0)  # nothing above changed it


async def test_a_server_without_the_sessions_model_or_shape_answers_409(
    client: httpx.AsyncClient, make_client: ClientFactory, tmp_path: Path
) -> None:
    char_session = await create(client, model="char", prompt="hi")
    word_session = await create(client, model="word", prompt="the cat ")
    # Another server on the same Redis: its "char" is a different (wider) network, and it has no "word".
    make_checkpoint(tmp_path / "char", level="char", hidden=24)
    async with make_client(models_dir=tmp_path) as other:
        wrong_shape = await call(other, "POST", f"/v1/sessions/{char_session}/feed", 409, json={"text": "a"})
        assert "does not fit model 'char'" in wrong_shape["error"]["message"]
        assert wrong_shape["error"]["reason"] == "state_shape"
        missing = await call(other, "POST", f"/v1/sessions/{word_session}/generate", 409, json={"max_tokens": 2})
        assert "'word', which is not loaded" in missing["error"]["message"]
    # The sessions themselves are untouched and go on where they belong.
    await call(client, "POST", f"/v1/sessions/{char_session}/feed", json={"text": "a"})


async def test_a_char_piece_that_would_join_the_previous_character_is_refused(client: httpx.AsyncClient) -> None:
    """ "e" then a combining acute is one NFC character "é" when whole: pieces must not score it as two."""
    session_id = await create(client, model="char")
    fed = await call(client, "POST", f"/v1/sessions/{session_id}/feed", json={"text": "cafe"})
    refused = await client.post(f"/v1/sessions/{session_id}/feed", json={"text": "\u0301 au lait"})
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert (
        error["field"] == "text" and "U+0301 COMBINING ACUTE ACCENT" in error["message"] and "'e'" in error["message"]
    )
    info = await call(client, "GET", f"/v1/sessions/{session_id}")
    assert info["version"] == fed["session"]["version"] and info["token_count"] == 4  # nothing changed
    # Sent with its base character, the same text goes in and scores as the whole text does.
    ok = await call(client, "POST", f"/v1/sessions/{session_id}/feed", json={"text": " cafe\u0301"})
    whole = (await call(client, "POST", "/v1/score", json={"model": "char", "texts": ["cafe cafe\u0301"]}))["results"][
        0
    ]
    assert [t["logprob"] for t in fed["tokens"] + ok["tokens"]] == pytest.approx(
        [t["logprob"] for t in whole["tokens"]], abs=1e-4
    )
    # A piece that starts a new character is fine, whatever came before.
    await call(client, "POST", f"/v1/sessions/{session_id}/feed", json={"text": "\u00e9t\u00e9"})
