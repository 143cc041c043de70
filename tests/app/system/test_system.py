"""Health, readiness, info, metrics, the model list, and a client that walks away mid-stream."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.helpers import parse_sse, served_over_http


async def test_health_ready_info(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["models"] is True
    info = (await client.get("/info")).json()
    assert info["default_model"] == "char" and info["models"] == ["char", "word"]


async def test_models_list(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    cards = {card["id"]: card for card in body["data"]}
    assert cards["char"]["level"] == "char" and cards["char"]["default"] is True
    assert cards["word"]["level"] == "word" and cards["word"]["cell"] == "gru"
    assert cards["word"]["vocab_size"] > 5 and cards["word"]["device"] == "cpu"
    assert cards["char"]["training"]["corpus"] == "tiny"


async def test_one_model_is_the_card_of_the_list(client: httpx.AsyncClient) -> None:
    cards = {card["id"]: card for card in (await client.get("/v1/models")).json()["data"]}
    for model_id, card in cards.items():
        assert (await client.get(f"/v1/models/{model_id}")).json() == card
    missing = await client.get("/v1/models/no-such-model")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    assert (
        "'no-such-model'" in missing.json()["error"]["message"] and missing.json()["error"]["model"] == "no-such-model"
    )


async def test_default_model_setting(make_client: object) -> None:
    async with make_client(default_model="word") as client:  # type: ignore[operator]
        assert (await client.post("/v1/generate", json={"max_tokens": 1})).json()["model"] == "word"


async def test_metrics_count_requests_tokens_and_batches(client: httpx.AsyncClient) -> None:
    await client.post("/v1/generate", json={"max_tokens": 7, "seed": 1})
    text = (await client.get("/metrics")).text
    assert 'rnnlm_requests_total{method="POST",route="/v1/generate",status="200"} 1.0' in text
    assert 'rnnlm_tokens_generated_total{model="char"} 7.0' in text
    assert re.search(r'rnnlm_batch_size_count\{model="char"\} [1-9]', text)
    assert 'rnnlm_request_seconds_count{method="POST",route="/v1/generate"} 1.0' in text
    assert 'rnnlm_active_sequences{model="char"} 0.0' in text


async def test_metrics_for_scaling_the_queue_and_token_latencies(client: httpx.AsyncClient) -> None:
    """rnnlm_requests_waiting/running (what an autoscaler reads) and the latency histograms."""
    for body in ({"prompt": "the quick", "max_tokens": 5}, {"prompt": "hello", "max_tokens": 3, "n": 2, "echo": False}):
        assert (await client.post("/v1/completions", json={**body, "model": "char", "seed": 1})).status_code == 200
    assert (await client.post("/v1/score", json={"texts": ["hello world"]})).status_code == 200
    text = (await client.get("/metrics")).text
    # Every answer is back, so nothing waits or runs (reported after the engine's last tick).
    assert 'rnnlm_requests_waiting{model="char"} 0.0' in text
    assert 'rnnlm_requests_running{model="char"} 0.0' in text
    # Three jobs were fed; three choices began (one, then the two of n=2); 4 + 2 x 2 tokens followed a first one.
    assert 'rnnlm_request_queue_seconds_count{model="char"} 3.0' in text
    assert 'rnnlm_time_to_first_token_seconds_count{model="char"} 3.0' in text
    assert 'rnnlm_inter_token_latency_seconds_count{model="char"} 8.0' in text
    for name in ("request_queue", "time_to_first_token", "inter_token_latency"):
        match = re.search(rf'rnnlm_{name}_seconds_sum\{{model="char"\}} ([0-9.e+-]+)', text)
        assert match is not None and float(match.group(1)) > 0


@pytest.fixture
async def live_url(models_dir: Path, redis_url: str) -> AsyncIterator[str]:
    """The app behind a real uvicorn on a free loopback port, in this event loop."""
    app = create_app(Settings(models_dir=models_dir, redis_url=redis_url, torch_threads=1, max_tokens_limit=100_000))
    async with served_over_http(app) as url:
        yield url


async def test_a_client_that_disconnects_stops_its_generation(live_url: str) -> None:
    async with httpx.AsyncClient(base_url=live_url, timeout=30) as client:
        request = {"max_tokens": 100_000, "stream": True, "seed": 1}
        async with client.stream("POST", "/v1/generate", json=request) as response:
            assert response.status_code == 200
            received = ""
            async for chunk in response.aiter_text():
                received += chunk
                if received.count("event: token") >= 3:
                    break
        assert [event for event, _ in parse_sse(received)][:3] == ["token"] * 3
        await assert_nothing_generated_for_nobody(client)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/generate", {"max_tokens": 100_000, "seed": 1}),
        ("/v1/generate", {"max_tokens": 100_000, "beam_width": 4}),
        ("/v1/completions", {"prompt": "a", "max_tokens": 100_000}),
    ],
    ids=["generate", "beam", "completions"],
)
async def test_a_client_that_hangs_up_on_a_whole_answer_stops_it(live_url: str, path: str, body: dict) -> None:
    async with httpx.AsyncClient(base_url=live_url, timeout=30) as client:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            await client.post(path, json=body, timeout=httpx.Timeout(30, read=0.5))
        gone = f'rnnlm_requests_total{{method="POST",route="{path}",status="499"}} 1.0'
        await eventually(lambda text: gone in text, client)  # the handler stopped: nginx's "client closed request"
        await assert_nothing_generated_for_nobody(client)


async def test_a_client_that_hangs_up_on_a_session_generation_leaves_the_session_as_it_was(live_url: str) -> None:
    async with httpx.AsyncClient(base_url=live_url, timeout=30) as client:
        created = (await client.post("/v1/sessions", json={"prompt": "hello"})).json()
        path = f"/v1/sessions/{created['id']}"
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"{path}/generate", json={"max_tokens": 100_000}, timeout=httpx.Timeout(30, read=0.5))
        gone = 'rnnlm_requests_total{method="POST",route="/v1/sessions/{session_id}/generate",status="499"} 1.0'
        await eventually(lambda text: gone in text, client)
        await assert_nothing_generated_for_nobody(client)
        after = (await client.get(path)).json()
        assert (after["version"], after["token_count"]) == (created["version"], created["token_count"])


async def eventually(check: Callable[[str], bool], client: httpx.AsyncClient) -> None:
    """Poll /metrics for up to ~3 s until `check` holds for its text."""
    for _ in range(300):
        if check((await client.get("/metrics")).text):
            return
        await asyncio.sleep(0.01)
    assert check((await client.get("/metrics")).text)


async def assert_nothing_generated_for_nobody(client: httpx.AsyncClient) -> None:
    """The engine's thread drops a cancelled sequence at its next step, then generates nothing more."""
    await eventually(lambda text: 'rnnlm_active_sequences{model="char"} 0.0' in text, client)
    before = await tokens_generated(client)
    await asyncio.sleep(0.3)
    assert await tokens_generated(client) == before < 100_000


async def tokens_generated(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    match = re.search(r'rnnlm_tokens_generated_total\{model="char"\} ([0-9.]+)', text)
    assert match is not None
    return float(match.group(1))
