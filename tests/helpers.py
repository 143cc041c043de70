"""What the tests share beyond fixtures: a running app, SSE parsing, waiting, session calls, test data.

Fixtures live in the conftest.py files; model and tokenizer factories in tests/factories.py;
real Redis servers in tests/redis_server.py. Nothing here is a test.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from model.checkpoint import load_checkpoint
from model.inference import feed_tokens, fresh_sequences

ClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan for real and talk to it over ASGI."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            yield client


@asynccontextmanager
async def served_over_http(app: FastAPI) -> AsyncIterator[str]:
    """The app behind a real uvicorn on a free loopback port, in this event loop; yields its URL.

    Unlike the ASGI transport, a response streams over the socket as it is written.
    """
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 5.0, interval: float = 0.01
) -> None:
    """Poll `condition` (plain or async) until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        await asyncio.sleep(interval)


# Server-Sent Events


def parse_sse(body: str) -> list[tuple[str, Any]]:
    """(event, parsed data) pairs; data that is not JSON (OpenAI's [DONE]) stays a string."""
    events: list[tuple[str, Any]] = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        event, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].removeprefix(" "))
        if data:
            text = "\n".join(data)
            events.append((event, text if text == "[DONE]" else json.loads(text)))
    return events


# Sessions over HTTP


SESSION_CHAR_TEXT = "the quick brown fox\n다람쥐 헌 쳇바퀴에 타고파\nhello world"


async def call(client: httpx.AsyncClient, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    return response.json() if response.content else None


async def create(client: httpx.AsyncClient, **body: Any) -> str:
    session = await call(client, "POST", "/v1/sessions", 201, json=body)
    return str(session["id"])


async def feed_pieces(client: httpx.AsyncClient, model: str, pieces: list[str]) -> list[dict[str, Any]]:
    """Feed `pieces` into a fresh session (flushing at the end); all the scored tokens."""
    session_id = await create(client, model=model)
    tokens: list[dict[str, Any]] = []
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        body = await call(client, "POST", f"/v1/sessions/{session_id}/feed", json={"text": piece, "flush": last})
        tokens += body["tokens"]
        assert body["logprob"] == pytest.approx(sum(t["logprob"] for t in body["tokens"]))
    info = await call(client, "GET", f"/v1/sessions/{session_id}")
    assert info["token_count"] == len(tokens) and info["pending_text"] == ""
    assert info["version"] == len(pieces) + 1
    return tokens


def cut(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# Scoring without the service


def offline_logprobs(checkpoint_dir: Path, text: str, eos: bool = False) -> list[float]:
    """log p(token | start of line, tokens before) computed directly with model/ primitives."""
    checkpoint = load_checkpoint(checkpoint_dir)
    tokenizer = checkpoint.tokenizer
    ids = tokenizer.encode(text).ids + ([tokenizer.boundary_id] if eos else [])
    state, pending = fresh_sequences(checkpoint.model, tokenizer.boundary_id, 1)
    logprobs, _, _ = feed_tokens(checkpoint.model, state, pending, [ids])
    return logprobs[0].tolist()


# Values and data


NON_DEFAULT: dict[str, Any] = {
    "max_tokens": 3,
    "temperature": 0.7,
    "top_k": 5,
    "top_p": 0.9,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "presence_penalty": 0.3,
    "frequency_penalty": 0.2,
    "logit_bias": {"3": 1.5},
    "stop": ["x"],
    "seed": 4,
    "logprobs": 1,
    "stop_at_eos": False,
    "allow_unk": True,
}

JSON_TEXT = '{"name": "bob", "age": 12, "tags": ["a", "b"], "ok": true}\n[1, 2.5, null, false]\n'
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 6}, "age": {"type": "integer", "maximum": 99}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
