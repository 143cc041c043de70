"""A session exported from a CPU server continues on a CUDA server, and back (skipped without a GPU)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import torch

from tests.helpers import ClientFactory

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

OCTETS = {"Content-Type": "application/octet-stream"}
# cuDNN may compute in TF32: the distributions agree to float rounding, not bit for bit.
TOLERANCE = 1e-3


async def next_token(client: httpx.AsyncClient, session: str) -> dict[int, float]:
    response = await client.get(f"/v1/sessions/{session}/next-token?top_k=0")
    assert response.status_code == 200, response.text
    return {t["id"]: t["logprob"] for t in response.json()["top"]}


async def moved(source: httpx.AsyncClient, target: httpx.AsyncClient, session: str) -> str:
    """The session exported from `source` and imported into `target`: the new id there."""
    data = (await source.get(f"/v1/sessions/{session}/export")).content
    response = await target.post("/v1/sessions/import", content=data, headers=OCTETS)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.mark.parametrize(("model", "prompt"), [("char", "the quick brown fox\n"), ("word", "the cat sat on the ")])
async def test_a_cpu_session_continues_on_cuda_and_back(make_client: ClientFactory, model: str, prompt: str) -> None:
    body: dict[str, Any] = {"model": model, "prompt": prompt}
    async with make_client(device="cpu") as cpu, make_client(device="cuda") as gpu:
        session = (await cpu.post("/v1/sessions", json=body)).json()["id"]
        on_gpu = await moved(cpu, gpu, session)
        assert await next_token(gpu, on_gpu) == pytest.approx(await next_token(cpu, session), abs=TOLERANCE)
        feed = {"text": "the end\n", "flush": True}
        a = (await cpu.post(f"/v1/sessions/{session}/feed", json=feed)).json()["tokens"]
        b = (await gpu.post(f"/v1/sessions/{on_gpu}/feed", json=feed)).json()["tokens"]
        assert [t["logprob"] for t in b] == pytest.approx([t["logprob"] for t in a], abs=TOLERANCE)
        back = await moved(gpu, cpu, on_gpu)  # and back to the CPU
        assert await next_token(cpu, back) == pytest.approx(await next_token(cpu, session), abs=TOLERANCE)
