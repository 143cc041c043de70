"""Every published limit and every kind of bad input answers with a clear 4xx JSON error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.helpers import ClientFactory


def assert_error(response: httpx.Response, status: int, needle: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"type", "message"}
    assert needle in error["message"], error["message"]
    assert "Traceback" not in response.text
    return error


async def test_info_publishes_every_limit(make_client: ClientFactory) -> None:
    async with make_client(max_text_chars=123, max_score_texts=3) as client:
        limits = (await client.get("/info")).json()["limits"]
    assert limits["max_text_chars"] == 123 and limits["max_score_texts"] == 3
    for name in ("max_body_bytes", "max_tokens_limit", "max_logprobs", "max_active_sequences", "max_stop_strings"):
        assert isinstance(limits[name], int)


async def test_size_limits_name_their_setting(make_client: ClientFactory) -> None:
    settings = {
        "max_text_chars": 50,
        "max_tokens_limit": 10,
        "max_score_texts": 2,
        "max_logprobs": 3,
        "max_stop_strings": 1,
        "max_body_bytes": 2000,
    }
    async with make_client(**settings) as client:
        assert_error(await client.post("/v1/generate", json={"prompt": "x" * 51}), 413, "max_text_chars=50")
        assert_error(await client.post("/v1/next-token", json={"context": "x" * 51}), 413, "max_text_chars")
        assert_error(await client.post("/v1/score", json={"texts": ["ok", "x" * 51]}), 413, "texts[1]")
        assert_error(await client.post("/v1/tokenize", json={"text": "x" * 51}), 413, "max_text_chars")
        assert_error(await client.post("/v1/generate", json={"max_tokens": 11}), 422, "max_tokens_limit=10")
        assert_error(
            await client.post("/v1/completions", json={"prompt": "a", "max_tokens": 11}), 400, "max_tokens_limit"
        )
        assert_error(await client.post("/v1/score", json={"texts": ["a", "b", "c"]}), 413, "max_score_texts=2")
        assert_error(await client.post("/v1/generate", json={"logprobs": 4}), 422, "max_logprobs=3")
        assert_error(await client.post("/v1/generate", json={"stop": ["a", "b"]}), 413, "max_stop_strings=1")
        big = {"texts": ["y" * 3000]}
        assert_error(await client.post("/v1/score", json=big), 413, "max_body_bytes=2000")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams in
            yield b'{"texts": ["'
            for _ in range(30):
                yield b"z" * 100
            yield b'"]}'

        chunked = await client.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
        assert_error(chunked, 413, "max_body_bytes")
        # under every limit, the same server answers
        assert (await client.post("/v1/score", json={"texts": ["ok"]})).status_code == 200


async def test_too_many_generating_sequences_is_429(make_client: ClientFactory) -> None:
    async with make_client(max_active_sequences=1) as client:
        long = asyncio.create_task(client.post("/v1/generate", json={"max_tokens": 1000, "seed": 1}))
        for _ in range(500):  # wait until the long one is admitted
            if 'rnnlm_active_sequences{model="char"} 1.0' in (await client.get("/metrics")).text:
                break
            await asyncio.sleep(0.01)
        # While the engine refuses work, /ready says so (a balancer stops sending here).
        ready = await client.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["accepting"] is False
        busy = await client.post("/v1/generate", json={"max_tokens": 1})
        assert_error(busy, 429, "max_active_sequences=1")
        assert_error(await client.post("/v1/generate", json={"max_tokens": 1, "stream": True}), 429, "max_active")
        assert (await long).status_code == 200
        assert (await client.post("/v1/generate", json={"max_tokens": 1})).status_code == 200
        ready = await client.get("/ready")
        assert ready.status_code == 200 and ready.json()["checks"]["accepting"] is True


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/generate", {"model": "nope"}, 404, "'nope' is not loaded"),
        ("/v1/score", {"model": "nope", "texts": ["a"]}, 404, "nope"),
        ("/v1/next-token", {"model": "nope"}, 404, "nope"),
        ("/v1/tokenize", {"model": "nope", "text": "a"}, 404, "nope"),
        ("/v1/generate", {"temperature": "hot"}, 422, "temperature"),
        ("/v1/generate", {"temperature": -0.5}, 422, "temperature"),
        ("/v1/generate", {"max_tokens": 1.5}, 422, "max_tokens"),
        ("/v1/generate", {"max_tokens": "5"}, 422, "max_tokens"),
        ("/v1/generate", {"top_p": 0}, 422, "top_p"),
        ("/v1/generate", {"top_k": 1000}, 422, "top_k=1000 is larger than the vocabulary"),
        ("/v1/next-token", {"top_k": 1000}, 422, "vocabulary"),
        ("/v1/generate", {"seed": -1}, 422, "seed"),
        ("/v1/generate", {"stop": [""]}, 422, "stop string"),
        ("/v1/generate", {"prompt": 5}, 422, "prompt"),
        ("/v1/generate", {"promt": "typo"}, 422, "promt"),
        ("/v1/score", {"texts": []}, 422, "texts"),
        ("/v1/score", {"texts": [""]}, 422, "texts.0"),
        ("/v1/score", {"texts": "not a list"}, 422, "texts"),
        ("/v1/tokenize", {"text": ""}, 422, "text"),
        ("/v1/detokenize", {"ids": [0, 99999]}, 422, "99999 is outside the vocabulary"),
        ("/v1/detokenize", {"ids": ["a"]}, 422, "ids.0"),
    ],
)
async def test_bad_input(client: httpx.AsyncClient, path: str, body: dict, status: int, needle: str) -> None:
    assert_error(await client.post(path, json=body), status, needle)


async def test_malformed_bodies(client: httpx.AsyncClient) -> None:
    json_type = {"content-type": "application/json"}
    assert_error(await client.post("/v1/generate", content=b'{"prompt": ', headers=json_type), 400, "not valid JSON")
    assert_error(await client.post("/v1/generate", content=b"[1, 2]", headers=json_type), 422, "")
    nan = await client.post("/v1/generate", content=b'{"temperature": NaN}', headers=json_type)
    assert_error(nan, 422, "temperature")
    inf = await client.post("/v1/generate", content=b'{"top_p": Infinity}', headers=json_type)
    assert_error(inf, 422, "top_p")
    surrogate = await client.post("/v1/score", content=b'{"texts": ["a\\ud800"]}', headers=json_type)
    assert_error(surrogate, 422, "texts.0")
    bad_utf8 = await client.post("/v1/generate", content=b'{"prompt": "\xff\xfe"}', headers=json_type)
    assert_error(bad_utf8, 400, "not valid UTF-8")
    text = await client.post("/v1/generate", content=b"prompt=hi", headers={"content-type": "text/plain"})
    assert_error(text, 415, "application/json")
    form = await client.post("/v1/score", data={"texts": "a"})
    assert_error(form, 415, "application/json")
    assert_error(await client.get("/v1/nowhere"), 404, "Not Found")
    assert_error(await client.get("/v1/generate"), 405, "Method Not Allowed")
