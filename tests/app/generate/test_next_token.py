"""POST /v1/next-token: a proper distribution, equal to the offline one."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest
import torch

from model.checkpoint import load_checkpoint
from model.inference import advance, prime


async def test_whole_vocabulary_sums_to_one_and_matches_offline(client: httpx.AsyncClient, models_dir: Path) -> None:
    response = await client.post("/v1/next-token", json={"model": "word", "context": "the cat", "top_k": None})
    assert response.status_code == 200, response.text
    body = response.json()
    checkpoint = load_checkpoint(models_dir / "word")
    assert len(body["top"]) == checkpoint.tokenizer.vocab_size
    probs = [entry["prob"] for entry in body["top"]]
    assert math.fsum(probs) == pytest.approx(1.0, abs=1e-6)
    assert body["top_mass"] == pytest.approx(1.0, abs=1e-6)
    assert probs == sorted(probs, reverse=True)
    ids = checkpoint.tokenizer.encode("the cat").ids
    state, pending = prime(checkpoint.model, checkpoint.tokenizer.boundary_id, [ids])
    logits, _ = advance(checkpoint.model, torch.tensor(pending), state)
    expected = torch.softmax(logits[0].double(), -1)
    for entry in body["top"]:
        assert entry["prob"] == pytest.approx(float(expected[entry["id"]]), abs=1e-6)
        assert entry["logprob"] == pytest.approx(math.log(entry["prob"]), abs=1e-5)
    entropy = float(-(expected * expected.log()).sum())
    assert body["entropy"] == pytest.approx(entropy, abs=1e-5)
    assert body["entropy_bits"] == pytest.approx(entropy / math.log(2), abs=1e-5)
    assert body["context_tokens"] == 2


async def test_top_k_entries_and_their_text(client: httpx.AsyncClient) -> None:
    body = (await client.post("/v1/next-token", json={"model": "word", "context": "the", "top_k": 3})).json()
    assert len(body["top"]) == 3 and 0 < body["top_mass"] < 1
    for entry in body["top"]:  # after a word, the next word's text starts with a space (or is a line break)
        assert entry["text"] in ("\n", " " + entry["token"])
    start = (await client.post("/v1/next-token", json={"model": "word", "top_k": 3})).json()
    assert start["context_tokens"] == 0
    assert all(e["text"] in ("\n", e["token"]) for e in start["top"])  # the start of a line: no space
