"""The engine on a CUDA device (skipped without one; `bench/gpu_check.py` runs these)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import httpx
import pytest
import torch

from tests.helpers import ClientFactory, offline_logprobs

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


async def post(client: httpx.AsyncClient, path: str, **body: object) -> dict:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_models_are_served_from_the_gpu(make_client: ClientFactory) -> None:
    async with make_client(device="cuda") as client:
        models = (await client.get("/v1/models")).json()["data"]
    assert models and all(str(m["device"]).startswith("cuda") for m in models)


async def test_seeded_text_is_the_same_alone_and_amid_30_other_requests(make_client: ClientFactory) -> None:
    request = {"prompt": "the quick", "max_tokens": 40, "seed": 11, "temperature": 0.9, "top_p": 0.9}
    async with make_client(device="cuda") as client:
        alone = await post(client, "/v1/generate", **request)
        noise = [
            post(client, "/v1/generate", prompt=f"noise {i}", max_tokens=20 + i, seed=i, temperature=1.3, top_k=5)
            for i in range(30)
        ]
        results = await asyncio.gather(*noise, post(client, "/v1/generate", **request))
    assert results[-1]["text"] == alone["text"]


@pytest.mark.parametrize("model", ["char", "word"])
async def test_score_on_the_gpu_equals_the_offline_computation(
    make_client: ClientFactory, models_dir: Path, model: str
) -> None:
    texts = ["the cat sat on the mat", "the quick brown fox jumps over the lazy dog " * 3]
    async with make_client(device="cuda") as client:
        body = await post(client, "/v1/score", model=model, texts=texts, eos=True)
    for text, result in zip(texts, body["results"], strict=True):
        per_token = [t["logprob"] for t in result["tokens"]]
        # Offline on the CPU in float32: the GPU's kernels differ only in rounding.
        assert per_token == pytest.approx(offline_logprobs(models_dir / model, text, eos=True), abs=1e-3)
        assert result["logprob"] == pytest.approx(math.fsum(per_token), abs=1e-6)


async def test_next_token_probabilities_sum_to_one(make_client: ClientFactory) -> None:
    async with make_client(device="cuda") as client:
        body = await post(client, "/v1/next-token", model="word", context="the cat", top_k=None)
    probabilities = [entry["prob"] for entry in body["top"]]
    assert math.fsum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert body["top_mass"] == pytest.approx(1.0, abs=1e-5)
