"""One generation path: every generating route is admitted the same way and samples the same way."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from tests.helpers import ClientFactory, parse_sse, wait_until

# A generation that holds its slot for as long as a test needs (it is cancelled at the end).
HOLDER_LIMIT = 10_000_000
LONG = {"max_tokens": HOLDER_LIMIT, "seed": 1, "stop_at_eos": False}


async def wait_for_active(client: httpx.AsyncClient, count: int, timeout: float = 5.0) -> None:
    async def active() -> bool:
        return f'rnnlm_active_sequences{{model="char"}} {count}.0' in (await client.get("/metrics")).text

    await wait_until(active, f"{count} active sequences", timeout)


def requests_counted(metrics: str, route: str, status: int) -> float:
    pattern = rf'rnnlm_requests_total{{method="POST",route="{re.escape(route)}",status="{status}"}} ([0-9.]+)'
    found = re.search(pattern, metrics)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("stream", [False, True])
async def test_every_generating_route_answers_429_with_retry_after_when_full(
    make_client: ClientFactory, stream: bool
) -> None:
    async with make_client(max_active_sequences=1, max_tokens_limit=HOLDER_LIMIT) as client:
        session = (await client.post("/v1/sessions", json={"prompt": "the "})).json()["id"]
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("/v1/generate", "/v1/generate", {"max_tokens": 3, "stream": stream}),
            ("/v1/completions", "/v1/completions", {"prompt": "a", "max_tokens": 3, "stream": stream}),
            (
                f"/v1/sessions/{session}/generate",
                "/v1/sessions/{session_id}/generate",
                {"max_tokens": 3, "stream": stream},
            ),
        ]
        if not stream:  # beam search and fill answer whole only
            calls += [
                ("/v1/generate", "/v1/generate", {"max_tokens": 3, "beam_width": 3}),
                ("/v1/fill", "/v1/fill", {"text": "th___ cat"}),
            ]
        holder = asyncio.create_task(client.post("/v1/generate", json=LONG))
        try:
            await wait_for_active(client, 1)
            for path, _, body in calls:
                response = await client.post(path, json=body)
                assert response.status_code == 429, (path, body, response.text)  # never 200 and then nothing
                assert response.headers["retry-after"] == "1", path
                error = response.json()["error"]
                assert error["type"] == "server_busy" and "max_active_sequences=1" in error["message"], path
            metrics = (await client.get("/metrics")).text
            for _, route, _ in calls:
                assert requests_counted(metrics, route, 429) >= 1, route
                assert requests_counted(metrics, route, 200) == 0, route
        finally:
            holder.cancel()
            await asyncio.gather(holder, return_exceptions=True)
        await wait_for_active(client, 0)
        # room again: the same calls are answered
        for path, _, body in calls:
            assert (await client.post(path, json=body)).status_code == 200, path


async def generated_text(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> str:
    """The text of a generation on any route, whole or streamed."""
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    if not body.get("stream"):
        answer = response.json()
        return str(answer["choices"][0]["text"] if "choices" in answer else answer["text"])
    events = parse_sse(response.text)
    if path.endswith("/completions"):
        return "".join(data["choices"][0]["text"] for _, data in events if isinstance(data, dict))
    return "".join(data["text"] for event, data in events if event == "token")


def others(count: int) -> list[tuple[str, dict[str, Any]]]:
    """Concurrent traffic with every kind of setting: filters, penalties, bias, beams, other seeds."""
    kinds: list[tuple[str, dict[str, Any]]] = [
        ("/v1/generate", {"prompt": "a b", "temperature": 0.7, "top_p": 0.8, "max_tokens": 20}),
        ("/v1/generate", {"prompt": "xy", "top_k": 3, "repetition_penalty": 1.3, "max_tokens": 20}),
        ("/v1/generate", {"prompt": "the", "beam_width": 3, "max_tokens": 8}),
        ("/v1/generate", {"prompt": "q", "min_p": 0.1, "presence_penalty": 1.0, "frequency_penalty": 0.5}),
        ("/v1/generate", {"prompt": "", "logit_bias": {"3": 5.0}, "stream": True, "max_tokens": 20}),
        ("/v1/completions", {"prompt": "zz", "temperature": 1.3, "top_p": 0.5, "max_tokens": 20}),
        ("/v1/next-token", {"context": "the ca"}),
        ("/v1/fill", {"text": "the c___ sat"}),
    ]
    traffic = []
    for i in range(count):
        path, body = kinds[i % len(kinds)]
        traffic.append((path, {**body, "seed": 100 + i} if "temperature" in body or "top_k" in body else body))
    return traffic


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/generate", {"prompt": "the ", "temperature": 0.9, "top_p": 0.9}),
        ("/v1/generate", {"prompt": "the ", "temperature": 0.8, "top_k": 5, "stream": True}),
        ("/v1/completions", {"prompt": "the ", "temperature": 0.9, "top_p": 0.95}),
        ("/v1/completions", {"prompt": "the ", "repetition_penalty": 1.2, "stream": True}),
        ("session", {"temperature": 1.0, "presence_penalty": 0.5}),
        ("session", {"temperature": 0.7, "min_p": 0.05, "stream": True}),
    ],
)
async def test_a_seeded_request_gives_the_same_text_alone_and_amid_30_others(
    make_client: ClientFactory, route: str, body: dict[str, Any]
) -> None:
    # Room for all 30 at once: each costs the rows it holds (a fill's span search 32, a beam 4).
    async with make_client(max_active_sequences=512) as client:
        await seeded_alone_and_amid_others(client, route, {**body, "seed": 1234, "max_tokens": 24})


async def seeded_alone_and_amid_others(client: httpx.AsyncClient, route: str, body: dict[str, Any]) -> None:
    if route == "session":
        session = (await client.post("/v1/sessions", json={"prompt": "the "})).json()["id"]

        async def run() -> str:  # a fork each time, so every run starts from the same state
            fork = (await client.post(f"/v1/sessions/{session}/fork")).json()["id"]
            return await generated_text(client, f"/v1/sessions/{fork}/generate", body)
    else:

        async def run() -> str:
            return await generated_text(client, route, body)

    alone = await run()
    traffic = [asyncio.ensure_future(client.post(path, json=other)) for path, other in others(30)]
    amid = await run()
    answers = await asyncio.gather(*traffic)
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers if a.status_code != 200]
    assert amid == alone and alone


async def test_a_completion_refused_for_room_leaves_nothing_running(make_client: ClientFactory) -> None:
    """Its prompts are admitted all or none: two fit beside a running generation, the third does not."""
    async with make_client(max_active_sequences=3, max_tokens_limit=HOLDER_LIMIT) as client:
        holder = asyncio.create_task(client.post("/v1/generate", json=LONG))
        try:
            await wait_for_active(client, 1)
            body = {"prompt": ["a", "b", "c"], "max_tokens": 100_000, "seed": 1}
            response = await client.post("/v1/completions", json=body)
            assert response.status_code == 429, response.text
            assert response.headers["retry-after"] == "1"
            # the two admitted before the refusal leave at the next tick, long before 100,000 tokens are out
            await wait_for_active(client, 1, timeout=1.0)
        finally:
            holder.cancel()
            await asyncio.gather(holder, return_exceptions=True)
