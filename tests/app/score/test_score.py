"""POST /v1/score against the offline computation on the checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest
import torch

from model.checkpoint import load_checkpoint
from model.inference import feed_tokens
from tests.helpers import offline_logprobs


async def score(client: httpx.AsyncClient, **body: object) -> dict:
    response = await client.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("model", ["char", "word"])
async def test_score_is_the_sum_of_its_tokens_and_matches_offline(
    client: httpx.AsyncClient, models_dir: Path, model: str
) -> None:
    texts = ["the cat sat on the mat", "a dog", "the quick brown fox jumps over the lazy dog " * 5]
    body = await score(client, model=model, texts=texts, eos=True)
    assert body["model"] == model and len(body["results"]) == 3
    for text, result in zip(texts, body["results"], strict=True):
        per_token = [t["logprob"] for t in result["tokens"]]
        assert result["logprob"] == pytest.approx(math.fsum(per_token), abs=1e-9)
        assert per_token == pytest.approx(offline_logprobs(models_dir / model, text, eos=True), abs=1e-4)
        n = result["token_count"]
        assert n == len(per_token)
        assert result["perplexity"] == pytest.approx(math.exp(-result["logprob"] / n))
        assert result["bits_per_token"] == pytest.approx(-result["logprob"] / n / math.log(2))
        if model == "char":
            assert result["bits_per_char"] == pytest.approx(result["bits_per_token"])
        else:
            assert result["bits_per_char"] is None


async def test_batched_texts_score_as_they_do_alone(client: httpx.AsyncClient) -> None:
    texts = ["hello world", "다람쥐 헌 쳇바퀴", "x", "the lazy dog jumps"]
    together = await score(client, texts=texts)
    for text, result in zip(texts, together["results"], strict=True):
        alone = (await score(client, texts=[text]))["results"][0]
        assert result["logprob"] == pytest.approx(alone["logprob"], abs=1e-4)


async def test_bos_eos_flags(client: httpx.AsyncClient, models_dir: Path) -> None:
    text = "the cat sat"
    plain = (await score(client, model="word", texts=[text]))["results"][0]
    with_eos = (await score(client, model="word", texts=[text], eos=True))["results"][0]
    no_bos = (await score(client, model="word", texts=[text], bos=False))["results"][0]
    assert [t["token"] for t in plain["tokens"]] == ["the", "cat", "sat"]
    assert [t["token"] for t in with_eos["tokens"]] == ["the", "cat", "sat", "<eos>"]
    assert with_eos["tokens"][:3] == plain["tokens"]
    # bos=false: the first token is context only, the rest are conditioned on it from a zero state
    assert [t["token"] for t in no_bos["tokens"]] == ["cat", "sat"]
    checkpoint = load_checkpoint(models_dir / "word")
    ids = checkpoint.tokenizer.encode(text).ids
    state = checkpoint.model.init_state(1)
    expected, _, _ = feed_tokens(checkpoint.model, state, [ids[0]], [ids[1:]])
    assert [t["logprob"] for t in no_bos["tokens"]] == pytest.approx(expected[0].tolist(), abs=1e-4)


async def test_unknown_tokens_are_flagged(client: httpx.AsyncClient) -> None:
    result = (await score(client, model="word", texts=["the zebra sat"]))["results"][0]
    assert [t["unknown"] for t in result["tokens"]] == [False, True, False]
    assert result["tokens"][1]["token"] == "<unk>" and result["unknown_count"] == 1
    char = (await score(client, texts=["hé"]))["results"][0]  # é is not in the tiny char vocabulary
    assert [t["unknown"] for t in char["tokens"]] == [False, True]


async def test_a_text_with_nothing_to_score_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/score", json={"model": "word", "texts": ["the", "   "], "bos": False})
    assert response.status_code == 422
    assert "texts[0] has no token to score" in response.json()["error"]["message"]


async def test_score_agrees_with_completions_echo(client: httpx.AsyncClient) -> None:
    text = "hello world"
    scored = (await score(client, texts=[text]))["results"][0]
    response = await client.post("/v1/completions", json={"prompt": text, "max_tokens": 0, "echo": True, "logprobs": 0})
    choice = response.json()["choices"][0]
    assert choice["text"] == text
    # OpenAI's and vLLM's echo give the first prompt token no log-probability; /v1/score keeps its number
    # (given the start of a line), and every later one is the same.
    echoed = choice["logprobs"]["token_logprobs"]
    assert echoed[0] is None and len(echoed) == len(scored["tokens"])
    assert echoed[1:] == pytest.approx([t["logprob"] for t in scored["tokens"][1:]], abs=1e-5)
    assert torch.tensor(choice["logprobs"]["text_offset"]).tolist() == list(range(len(text)))
