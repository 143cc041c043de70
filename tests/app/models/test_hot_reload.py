"""Hot loading: a checkpoint directory added while serving is served, a removed one is unloaded.

Each test runs the real lifespan on a models directory of its own, polled every 50 ms.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from model.checkpoint import save_checkpoint
from tests.factories import make_checkpoint, tiny_model, word_tokenizer
from tests.helpers import parse_sse, running

POLL = 0.05
LONG = 3000  # tokens: seconds of streaming here, so still running well after its model is seen removed


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"never {what}"
        await asyncio.sleep(POLL / 2)


async def served(client: httpx.AsyncClient) -> list[str]:
    return [card["id"] for card in (await client.get("/v1/models")).json()["data"]]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoints to copy into a served directory: a char model and a word model."""
    root = tmp_path_factory.mktemp("checkpoints")
    make_checkpoint(root / "char", level="char", seed=1)
    make_checkpoint(root / "word", level="word", seed=2)
    return root


@pytest.fixture
def models(tmp_path: Path, checkpoints: Path) -> Path:
    """A served directory that starts with the char model only."""
    models = tmp_path / "models"
    shutil.copytree(checkpoints / "char", models / "char")
    return models


@pytest.fixture
async def client(models: Path, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        models_dir=models, redis_url=redis_url, torch_threads=1, models_poll_seconds=POLL, max_tokens_limit=LONG
    )
    async with running(create_app(settings)) as c:
        yield c


async def test_a_directory_copied_in_is_served(client: httpx.AsyncClient, models: Path, checkpoints: Path) -> None:
    assert await served(client) == ["char"]
    shutil.copytree(checkpoints / "word", models / "a-word")  # file by file, as `cp -r` would
    await eventually(lambda: _listed(client, "a-word"), "listed in /v1/models")
    card = (await client.get("/v1/models/a-word")).json()
    assert card["level"] == "word" and card["default"] is False  # first by name now, but the default stays
    body = {"model": "a-word", "prompt": "the cat", "max_tokens": 3, "seed": 1}
    answer = await client.post("/v1/generate", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] == len(answer.json()["tokens"])
    assert (await client.get("/ready")).json()["models"] == ["a-word", "char"]
    assert 'rnnlm_tokens_generated_total{model="a-word"}' in (await client.get("/metrics")).text


async def test_a_removed_directory_is_unloaded_and_404s(client: httpx.AsyncClient, models: Path) -> None:
    generated = await client.post("/v1/generate", json={"model": "char", "max_tokens": 2})
    assert generated.status_code == 200
    shutil.rmtree(models / "char")
    await eventually(lambda: _unlisted(client, "char"), "gone from /v1/models")
    for response, message in (
        (await client.post("/v1/generate", json={"model": "char", "max_tokens": 2}), "'char' is not loaded"),
        (await client.get("/v1/models/char"), "'char' is not loaded"),
        (await client.post("/v1/generate", json={"max_tokens": 2}), "no model is loaded"),  # it was the default
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["type"] == "not_found"
        assert message in response.json()["error"]["message"]
    assert (await client.get("/ready")).status_code == 503  # nothing to serve: take no traffic
    await eventually(lambda: _metrics_lack(client, 'model="char"'), "its metrics dropped")


async def test_a_generation_running_while_its_model_is_removed_finishes(
    client: httpx.AsyncClient, models: Path
) -> None:
    tokens = LONG
    body = {"model": "char", "max_tokens": tokens, "stream": True, "seed": 3}
    streaming = asyncio.create_task(client.post("/v1/generate", json=body))
    await eventually(lambda: _metrics_have(client, 'rnnlm_active_sequences{model="char"} 1.0'), "generating")
    shutil.rmtree(models / "char")
    await eventually(lambda: _unlisted(client, "char"), "gone from /v1/models")
    refused = await client.post("/v1/generate", json={"model": "char", "max_tokens": 2})
    assert refused.status_code == 404
    assert not streaming.done(), "the generation finished before the removal: make it longer"
    response = await streaming
    assert response.status_code == 200
    events = parse_sse(response.text)
    assert [name for name, _ in events].count("token") == tokens
    assert events[-1] == ("done", events[-1][1]) and events[-1][1]["finish_reason"] == "length"
    assert events[-1][1]["usage"]["completion_tokens"] == tokens
    # idle now: the next polls close its engine and drop its metrics
    await eventually(lambda: _metrics_lack(client, 'model="char"'), "its engine closed")


async def test_the_fill_pairs_follow_the_models(client: httpx.AsyncClient, models: Path, checkpoints: Path) -> None:
    tokenizer = word_tokenizer()
    shutil.copytree(checkpoints / "word", models / "word")
    save_checkpoint(models / "word-backward", tiny_model(tokenizer, seed=4), tokenizer, direction="backward")
    await eventually(lambda: _listed(client, "word-backward"), "the backward model listed")
    await eventually(lambda: _listed(client, "word"), "the forward model listed")
    assert (await client.get("/v1/models/word")).json()["fill_partner"] == "word-backward"
    assert (await client.get("/info")).json()["fill_pairs"] == {"word": "word-backward"}
    shutil.rmtree(models / "word-backward")
    await eventually(lambda: _unlisted(client, "word-backward"), "the backward model gone")
    assert (await client.get("/v1/models/word")).json()["fill_partner"] is None
    assert (await client.get("/info")).json()["fill_pairs"] == {}


async def test_a_bad_directory_is_logged_once_and_tried_again_when_it_changes(
    client: httpx.AsyncClient, models: Path, checkpoints: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="app")
    aside = models.parent / "broken"
    shutil.copytree(checkpoints / "word", aside)
    (aside / "model.safetensors").write_bytes(b"not weights")
    bad = Path(shutil.move(aside, models / "broken"))
    await asyncio.sleep(POLL * 10)  # many polls
    failures = [r for r in caplog.records if "cannot load model broken" in r.getMessage()]
    assert len(failures) == 1 and "model.safetensors" in failures[0].getMessage()
    assert await served(client) == ["char"]
    shutil.copy(checkpoints / "word" / "model.safetensors", bad / "model.safetensors")  # fixed
    await eventually(lambda: _listed(client, "broken"), "loaded once fixed")


async def test_a_removed_default_moves_to_the_first_by_name_unless_it_is_set(
    models: Path, checkpoints: Path, redis_url: str
) -> None:
    shutil.copytree(checkpoints / "word", models / "word")
    for default_model, then in ((None, "word"), ("char", None)):
        settings = Settings(
            models_dir=models, redis_url=redis_url, models_poll_seconds=POLL, default_model=default_model
        )
        async with running(create_app(settings)) as client:
            assert (await client.get("/info")).json()["default_model"] == "char"
            shutil.move(models / "char", models.parent / "char-aside")
            await eventually(lambda c=client: _unlisted(c, "char"), "char gone")  # type: ignore[misc]
            answer = await client.post("/v1/generate", json={"max_tokens": 2})
            if then:
                assert (await client.get("/info")).json()["default_model"] == then
                assert answer.status_code == 200 and answer.json()["model"] == then
            else:  # RNNLM_DEFAULT_MODEL stays the default, and says it is missing
                assert answer.status_code == 404 and "'char' is not loaded" in answer.json()["error"]["message"]
            shutil.move(models.parent / "char-aside", models / "char")
            await eventually(lambda c=client: _listed(c, "char"), "char back")  # type: ignore[misc]


async def _listed(client: httpx.AsyncClient, model_id: str) -> bool:
    return model_id in await served(client)


async def _unlisted(client: httpx.AsyncClient, model_id: str) -> bool:
    return model_id not in await served(client)


async def _metrics_have(client: httpx.AsyncClient, text: str) -> bool:
    return text in (await client.get("/metrics")).text


async def _metrics_lack(client: httpx.AsyncClient, text: str) -> bool:
    return not await _metrics_have(client, text)
