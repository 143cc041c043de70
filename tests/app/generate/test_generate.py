"""POST /v1/generate: sampling settings, seeds under load, streaming, stop strings, finish reasons."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import httpx
import pytest
import torch

from app.main import create_app
from app.settings import Settings
from model.checkpoint import save_checkpoint
from tests.factories import tiny_model, word_tokenizer
from tests.helpers import parse_sse, running


async def generate(client: httpx.AsyncClient, **body: object) -> dict:
    response = await client.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def stream(client: httpx.AsyncClient, **body: object) -> list[tuple[str, dict]]:
    response = await client.post("/v1/generate", json={**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_sse(response.text)


async def test_same_seed_same_text_and_different_seeds_differ(client: httpx.AsyncClient) -> None:
    first = await generate(client, prompt="the quick", max_tokens=30, seed=7)
    again = await generate(client, prompt="the quick", max_tokens=30, seed=7)
    other = await generate(client, prompt="the quick", max_tokens=30, seed=8)
    assert first["text"] == again["text"]
    assert first["text"] != other["text"]
    assert first["finish_reason"] == "length"
    assert first["usage"] == {"prompt_tokens": 9, "completion_tokens": 30, "total_tokens": 39}
    assert "".join(t["text"] for t in first["tokens"]) == first["text"]


async def test_seeded_result_is_the_same_while_20_other_requests_run(client: httpx.AsyncClient) -> None:
    request = {"prompt": "hello", "max_tokens": 40, "seed": 1234, "temperature": 0.9, "top_p": 0.95}
    alone = await generate(client, **request)
    noise = [
        generate(client, prompt=f"noise {i}", max_tokens=30 + i, seed=i, temperature=1.5, top_k=5) for i in range(20)
    ]
    results = await asyncio.gather(*noise, generate(client, **request))
    assert results[-1]["text"] == alone["text"]
    assert [t["logprob"] for t in results[-1]["tokens"]] == pytest.approx(
        [t["logprob"] for t in alone["tokens"]], abs=1e-5
    )


@pytest.mark.parametrize("model", ["char", "word"])
async def test_streamed_pieces_concatenate_to_the_whole_text(client: httpx.AsyncClient, model: str) -> None:
    request = {"model": model, "prompt": "the cat", "max_tokens": 25, "seed": 3, "logprobs": 2, "stop_at_eos": False}
    whole = await generate(client, **request)
    events = await stream(client, **request)
    tokens = [data for event, data in events if event == "token"]
    assert events[-1][0] == "done"
    assert "".join(t["text"] for t in tokens) == whole["text"]
    assert [t["id"] for t in tokens] == [t["id"] for t in whole["tokens"]]
    assert all(len(t["top_logprobs"]) == 2 for t in tokens)
    assert events[-1][1]["finish_reason"] == whole["finish_reason"] == "length"
    assert events[-1][1]["usage"] == whole["usage"]


async def test_greedy_is_deterministic_and_follows_the_most_likely_token(client: httpx.AsyncClient) -> None:
    a = await generate(client, prompt="hello", max_tokens=5, temperature=0, logprobs=1)
    b = await generate(client, prompt="hello", max_tokens=5, temperature=0, seed=99)
    assert a["text"] == b["text"]
    for token in a["tokens"]:  # the chosen token is the top alternative
        assert token["top_logprobs"][0]["id"] == token["id"]


async def test_logprobs_are_the_raw_model_probabilities(client: httpx.AsyncClient) -> None:
    generated = await generate(client, prompt="the", max_tokens=1, seed=5, temperature=2.0, logprobs=5)
    dist = (await client.post("/v1/next-token", json={"context": "the", "top_k": None})).json()
    by_id = {entry["id"]: entry["logprob"] for entry in dist["top"]}
    token = generated["tokens"][0]
    assert token["logprob"] == pytest.approx(by_id[token["id"]], abs=1e-5)
    for alt in token["top_logprobs"]:
        assert alt["logprob"] == pytest.approx(by_id[alt["id"]], abs=1e-5)
    assert [a["logprob"] for a in token["top_logprobs"]] == sorted(
        (a["logprob"] for a in token["top_logprobs"]), reverse=True
    )


async def test_top_k_1_is_greedy(client: httpx.AsyncClient) -> None:
    greedy = await generate(client, prompt="over the", max_tokens=8, temperature=0)
    top1 = await generate(client, prompt="over the", max_tokens=8, top_k=1, seed=11)
    assert greedy["text"] == top1["text"]


async def test_repetition_penalty_changes_the_text(client: httpx.AsyncClient) -> None:
    plain = await generate(client, prompt="the", max_tokens=30, temperature=0)
    penalised = await generate(client, prompt="the", max_tokens=30, temperature=0, repetition_penalty=5.0)
    assert plain["text"] != penalised["text"]


@pytest.mark.parametrize("stream_it", [False, True])
async def test_stop_string_ends_the_text_and_is_never_streamed(client: httpx.AsyncClient, stream_it: bool) -> None:
    full = (await generate(client, prompt="a", max_tokens=40, seed=21))["text"]
    stop = full[12:15]
    expected = full[: full.find(stop)]
    request = {"prompt": "a", "max_tokens": 40, "seed": 21, "stop": ["zzzzz", stop]}
    if stream_it:
        events = await stream(client, **request)
        text = "".join(data["text"] for event, data in events if event == "token")
        finish = events[-1][1]["finish_reason"]
    else:
        result = await generate(client, **request)
        text, finish = result["text"], result["finish_reason"]
    assert text == expected
    assert finish == "stop"


async def test_max_tokens_zero_generates_nothing(client: httpx.AsyncClient) -> None:
    result = await generate(client, prompt="hello", max_tokens=0)
    assert result["text"] == "" and result["tokens"] == [] and result["finish_reason"] == "length"


async def test_default_model_and_word_model_text_is_the_decoded_ids(client: httpx.AsyncClient) -> None:
    char = await generate(client, max_tokens=3, seed=1)
    assert char["model"] == "char"
    word = await generate(client, model="word", prompt="the cat", max_tokens=6, seed=2, stop_at_eos=False)
    prompt_ids = [
        t["id"] for t in (await client.post("/v1/tokenize", json={"model": "word", "text": "the cat"})).json()["tokens"]
    ]
    ids = prompt_ids + [t["id"] for t in word["tokens"]]
    decoded = (await client.post("/v1/detokenize", json={"model": "word", "ids": ids})).json()["text"]
    assert decoded == "the cat" + word["text"]


async def test_word_model_finishes_with_eos(tmp_path: Path, redis_url: str) -> None:
    tokenizer = word_tokenizer()
    model = tiny_model(tokenizer, cell="lstm")
    with torch.no_grad():
        model.decoder.bias[tokenizer.eos_id] = 20.0  # <eos> all but certain
    save_checkpoint(tmp_path / "eos-word", model, tokenizer)
    app = create_app(Settings(models_dir=tmp_path, redis_url=redis_url, torch_threads=1))
    async with running(app) as client:
        result = await generate(client, prompt="the cat", max_tokens=10, seed=1)
        assert result["finish_reason"] == "eos"
        assert result["text"] == ""  # the boundary token's line break is not part of the text
        assert result["tokens"][0]["token"] == "\n" and result["usage"]["completion_tokens"] == 1
        assert math.exp(result["tokens"][0]["logprob"]) > 0.99
        longer = await generate(client, prompt="the cat", max_tokens=3, seed=1, stop_at_eos=False)
        assert longer["finish_reason"] == "length" and longer["text"] == "\n\n\n"
