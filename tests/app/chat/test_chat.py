"""/v1/chat/completions is refused, whatever the method, with a pointer to /v1/completions."""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.parametrize("method", ["POST", "GET", "PUT", "DELETE"])
async def test_chat_completions_points_to_completions(client: httpx.AsyncClient, method: str) -> None:
    body = {"model": "word", "messages": [{"role": "user", "content": "hi"}]} if method == "POST" else None
    response = await client.request(method, "/v1/chat/completions", json=body)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "unsupported" and error["use"] == "/v1/completions"
    assert "/v1/completions" in error["message"] and "chat template" in error["message"]


async def test_chat_completions_is_not_in_the_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/v1/chat/completions" not in paths and "/v1/completions" in paths
