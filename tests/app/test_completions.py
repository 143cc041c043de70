"""POST /v1/completions in OpenAI's shape."""

from __future__ import annotations

import httpx
import pytest

from tests.app.sse import parse_sse


async def complete(client: httpx.AsyncClient, **body: object) -> dict:
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_response_shape_and_same_text_as_generate(client: httpx.AsyncClient) -> None:
    body = await complete(client, prompt="the cat", max_tokens=12, seed=4, logprobs=2, user="ignored")
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == "char"
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    generated = (await client.post("/v1/generate", json={"prompt": "the cat", "max_tokens": 12, "seed": 4})).json()
    assert choice["text"] == generated["text"]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == 12
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"] == list(range(12))
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 12, "total_tokens": 19}


async def test_echo_with_max_tokens_zero_scores_the_prompt(client: httpx.AsyncClient) -> None:
    prompt = "the cat  sat"
    body = await complete(client, model="word", prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    (choice,) = body["choices"]
    assert choice["text"] == prompt
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == ["the", " cat", " sat"]
    assert logprobs["text_offset"] == [0, 4, 9]  # offsets into the prompt as sent
    assert logprobs["top_logprobs"] == [None, None, None]
    scored = (await client.post("/v1/score", json={"model": "word", "texts": [prompt]})).json()["results"][0]
    assert logprobs["token_logprobs"] == pytest.approx([t["logprob"] for t in scored["tokens"]], abs=1e-5)
    assert body["usage"]["completion_tokens"] == 0 and body["usage"]["prompt_tokens"] == 3


async def test_echo_then_generated_tokens(client: httpx.AsyncClient) -> None:
    body = await complete(client, prompt="hi", max_tokens=3, echo=True, logprobs=0, seed=1)
    choice = body["choices"][0]
    assert choice["text"].startswith("hi") and len(choice["text"]) == 5
    assert choice["logprobs"]["text_offset"] == [0, 1, 2, 3, 4]
    assert choice["logprobs"]["top_logprobs"][2:] == [{}, {}, {}]


async def test_several_prompts_and_stop(client: httpx.AsyncClient) -> None:
    body = await complete(client, prompt=["a", "b"], max_tokens=5, seed=2)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    full = body["choices"][0]["text"]
    stopped = await complete(client, prompt="a", max_tokens=5, seed=2, stop=full[2])
    assert stopped["choices"][0]["text"] == full[: full.index(full[2])]
    assert stopped["choices"][0]["finish_reason"] == "stop"


async def test_stream_in_openai_format(client: httpx.AsyncClient) -> None:
    request = {"prompt": "the", "max_tokens": 6, "seed": 9, "logprobs": 1}
    whole = await complete(client, **request)
    response = await client.post("/v1/completions", json={**request, "stream": True})
    events = parse_sse(response.text)
    assert events[-1] == ("message", "[DONE]")
    chunks = [data for _, data in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert [c["choices"][0]["logprobs"]["tokens"][0] for c in chunks[:-1]] == whole["choices"][0]["logprobs"]["tokens"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"prompt": "a", "n": 2}, 422, "n"),
        ({"prompt": ["a", "b"], "stream": True}, 422, "single prompt"),
        ({"prompt": "a", "stream": True, "echo": True, "logprobs": 1}, 422, "not streamed"),
        ({"prompt": "a", "model": "nope"}, 404, "nope"),
        ({"max_tokens": 3}, 422, "prompt"),
    ],
)
async def test_bad_requests(client: httpx.AsyncClient, body: dict, status: int, needle: str) -> None:
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]["message"]
