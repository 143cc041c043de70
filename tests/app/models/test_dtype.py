"""RNNLM_DTYPE: a model served in bfloat16 answers like its float32 self, and the two precisions
continue each other's sessions (through Redis and through export files) because a state
always leaves the engine in float32."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import torch
from safetensors.torch import load

from app.models.registry import resolve_dtype
from app.sessions.codec import decode_session
from app.sessions.store import DEFAULT_NAMESPACE
from model.precision import bf16_supported
from tests.helpers import ClientFactory, offline_logprobs

TEXTS = ["the cat sat on the mat", "the quick brown fox jumps over the lazy dog", "다람쥐 헌 쳇바퀴"]
# bfloat16 keeps 8 bits of mantissa: a log-probability of about -3 moves by a few 1e-3 on
# these tiny models (measured: at most 0.0023 per token, 0.04% of a text's total).
PER_TOKEN = 0.01
TOTAL = 0.002  # relative


@asynccontextmanager
async def both(make_client: ClientFactory, **overrides: Any) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """A float32 and a bfloat16 server of the same checkpoints, sharing one Redis."""
    async with (
        make_client(dtype="float32", **overrides) as f32,
        make_client(dtype="bfloat16", **overrides) as bf16,
    ):
        yield {"float32": f32, "bfloat16": bf16}


async def call(client: httpx.AsyncClient, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    return response.json() if response.headers.get("content-type") == "application/json" else response.content


def test_auto_is_bfloat16_exactly_where_the_device_computes_it() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if bf16_supported(cpu) else torch.float32)
    assert resolve_dtype("float32", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16


async def test_models_and_info_say_the_precision(make_client: ClientFactory) -> None:
    async with both(make_client) as clients:
        for dtype, client in clients.items():
            cards = (await call(client, "GET", "/v1/models"))["data"]
            assert {card["id"]: card["dtype"] for card in cards} == {"char": dtype, "word": dtype}
            info = await call(client, "GET", "/info")
            assert info["dtype"] == dtype and info["model_dtypes"] == {"char": dtype, "word": dtype}
    async with make_client(dtype="auto") as client:
        expected = "bfloat16" if bf16_supported("cpu") else "float32"
        info = await call(client, "GET", "/info")
        assert info["dtype"] == "auto" and info["model_dtypes"] == {"char": expected, "word": expected}


@pytest.mark.parametrize("model", ["char", "word"])
async def test_bfloat16_scores_match_float32(make_client: ClientFactory, models_dir: Path, model: str) -> None:
    async with both(make_client) as clients:
        bodies = {
            dtype: await call(client, "POST", "/v1/score", json={"model": model, "texts": TEXTS, "eos": True})
            for dtype, client in clients.items()
        }
    for text, f32, bf16 in zip(TEXTS, bodies["float32"]["results"], bodies["bfloat16"]["results"], strict=True):
        exact = offline_logprobs(models_dir / model, text, eos=True)  # float32, model/ alone
        assert [t["logprob"] for t in f32["tokens"]] == pytest.approx(exact, abs=1e-4)
        assert [t["id"] for t in bf16["tokens"]] == [t["id"] for t in f32["tokens"]]
        assert [t["logprob"] for t in bf16["tokens"]] == pytest.approx(exact, abs=PER_TOKEN)
        assert bf16["logprob"] == pytest.approx(f32["logprob"], rel=TOTAL)
        assert math.isfinite(bf16["perplexity"])
        assert bf16["logprob"] != f32["logprob"], "the bfloat16 server computed in bfloat16"


async def test_a_seeded_bfloat16_generation_is_the_same_alone_and_amid_others(make_client: ClientFactory) -> None:
    body = {"model": "char", "prompt": "the ", "max_tokens": 40, "seed": 11, "temperature": 1.0}
    async with make_client(dtype="bfloat16") as client:
        alone = await call(client, "POST", "/v1/generate", json=body)
        crowd = [{**body, "seed": seed} for seed in range(12)]
        answers = await asyncio.gather(
            *(call(client, "POST", "/v1/generate", json=b) for b in [*crowd[:6], body, *crowd[6:]])
        )
    assert answers[6]["text"] == alone["text"]
    assert len({a["text"] for a in answers}) > 1


@pytest.mark.parametrize(("first", "then"), [("bfloat16", "float32"), ("float32", "bfloat16")])
async def test_the_precisions_continue_each_others_sessions(
    make_client: ClientFactory, redis_url: str, first: str, then: str
) -> None:
    text, more = "the quick brown fox\n", "jumps over the lazy dog"
    async with both(make_client) as clients:
        # The reference: one float32 session fed both pieces.
        reference = (await call(clients["float32"], "POST", "/v1/sessions", 201, json={"model": "char"}))["id"]
        for piece in (text, more):
            expected = await call(
                clients["float32"], "POST", f"/v1/sessions/{reference}/feed", json={"text": piece, "flush": True}
            )
        session = (await call(clients[first], "POST", "/v1/sessions", 201, json={"model": "char"}))["id"]
        await call(clients[first], "POST", f"/v1/sessions/{session}/feed", json={"text": text, "flush": True})
        stored = redis.Redis.from_url(redis_url).hget(f"{DEFAULT_NAMESPACE}{session}", "d")  # the record
        assert stored is not None
        assert {t.dtype for t in decode_session(stored).state} == {torch.float32}, "one wire format"
        fed = await call(clients[then], "POST", f"/v1/sessions/{session}/feed", json={"text": more, "flush": True})
        assert [t["id"] for t in fed["tokens"]] == [t["id"] for t in expected["tokens"]]
        assert [t["logprob"] for t in fed["tokens"]] == pytest.approx(
            [t["logprob"] for t in expected["tokens"]], abs=PER_TOKEN
        )
        generated = await call(
            clients[then], "POST", f"/v1/sessions/{session}/generate", json={"max_tokens": 8, "seed": 3}
        )
        assert generated["session"]["version"] == 4


@pytest.mark.parametrize(("first", "then"), [("bfloat16", "float32"), ("float32", "bfloat16")])
async def test_an_export_file_of_one_precision_imports_into_the_other(
    make_client: ClientFactory, first: str, then: str
) -> None:
    octets = {"Content-Type": "application/octet-stream"}
    async with both(make_client) as clients:
        session = (
            await call(clients[first], "POST", "/v1/sessions", 201, json={"model": "word", "prompt": "the cat sat on"})
        )["id"]
        data = await call(clients[first], "GET", f"/v1/sessions/{session}/export")
        assert isinstance(data, bytes)
        states = {name: t for name, t in load(data).items() if t.is_floating_point()}
        assert states and {t.dtype for t in states.values()} == {torch.float32}, "one wire format"
        imported = await call(clients[then], "POST", "/v1/sessions/import", 201, content=data, headers=octets)
        here = await call(clients[first], "GET", f"/v1/sessions/{session}/next-token?top_k=5")
        there = await call(clients[then], "GET", f"/v1/sessions/{imported['id']}/next-token?top_k=5")
        assert [t["logprob"] for t in there["top"]] == pytest.approx([t["logprob"] for t in here["top"]], abs=PER_TOKEN)
