"""POST /v1/completions in OpenAI's shape."""

from __future__ import annotations

import httpx
import pytest

from app.completions import serving as completions_serving
from app.completions.shared_prefixes import prefix_groups
from tests.helpers import ClientFactory, parse_sse


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
    # OpenAI's logprobs=2: the sampled token and the 2 likeliest (3 entries, or 2 when it is one of them)
    for token, value, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        assert top[token] == value and len(top) in (2, 3)
        assert sorted(top.values(), reverse=True)[:2] == [v for k, v in top.items()][:2]
    assert body["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 12,
        "total_tokens": 19,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert body["system_fingerprint"].startswith("rnnlm-") and len(body["system_fingerprint"]) == 22


async def test_echo_with_max_tokens_zero_scores_the_prompt(client: httpx.AsyncClient) -> None:
    prompt = "the cat  sat"
    body = await complete(client, model="word", prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    (choice,) = body["choices"]
    assert choice["text"] == prompt
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == ["the", " cat", " sat"]
    assert logprobs["text_offset"] == [0, 4, 9]  # offsets into the prompt as sent
    scored = (await client.post("/v1/score", json={"model": "word", "texts": [prompt]})).json()["results"][0]
    # OpenAI's first prompt token has no number (/v1/score keeps it); the rest are /v1/score's
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert logprobs["token_logprobs"][1:] == pytest.approx([t["logprob"] for t in scored["tokens"]][1:], abs=1e-5)
    # the prompt's alternatives come from the same log-softmax row, keyed as `tokens` spells tokens: the token
    # itself and the likeliest; where the prompt token is the likeliest, that is one entry (lm-eval's greedy check)
    for token, value, top in zip(
        logprobs["tokens"][1:], logprobs["token_logprobs"][1:], logprobs["top_logprobs"][1:], strict=True
    ):
        assert top[token] == value and max(top.values()) >= value
        assert (len(top) == 1) == (max(top.values()) == value)
    assert body["usage"]["completion_tokens"] == 0 and body["usage"]["prompt_tokens"] == 3


async def test_echo_then_generated_tokens(client: httpx.AsyncClient) -> None:
    body = await complete(client, prompt="hi", max_tokens=3, echo=True, logprobs=0, seed=1)
    choice = body["choices"][0]
    assert choice["text"].startswith("hi") and len(choice["text"]) == 5
    assert choice["logprobs"]["text_offset"] == [0, 1, 2, 3, 4]
    # logprobs=0: each token's own entry, the prompt's second token's too (its first has none, as OpenAI's)
    logprobs = choice["logprobs"]
    assert logprobs["top_logprobs"][0] is None and logprobs["token_logprobs"][0] is None
    assert logprobs["top_logprobs"][1:] == [
        {token: value} for token, value in zip(logprobs["tokens"][1:], logprobs["token_logprobs"][1:], strict=True)
    ]


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
    # vLLM's: the finish rides on the last token's chunk, no extra empty chunk
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["length"]
    assert [c["choices"][0]["logprobs"]["tokens"][0] for c in chunks] == whole["choices"][0]["logprobs"]["tokens"]
    assert [c["choices"][0]["logprobs"]["top_logprobs"][0] for c in chunks] == whole["choices"][0]["logprobs"][
        "top_logprobs"
    ]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"prompt": "a", "n": 3, "best_of": 2}, 400, "best_of=2 is less than n=3"),
        ({"prompt": "a", "best_of": 3, "stream": True}, 400, "best_of"),
        ({"prompt": [1, 2, 999]}, 400, "token id 999"),
        ({"prompt": "a", "logit_bias": {"x": 1}}, 400, "logit_bias"),
        ({"prompt": "a", "logit_bias": {"3": 101}}, 400, "logit_bias"),
        ({"prompt": "a", "suffix": " b"}, 400, "backward partner"),
        ({"prompt": "a", "n": 65}, 413, "max_active_sequences"),
        ({"prompt": "a", "stream": True, "echo": True, "logprobs": 1}, 400, "not streamed"),
        ({"prompt": "a", "model": "nope"}, 404, "nope"),
        ({"max_tokens": 3}, 400, "prompt"),
    ],
)
async def test_bad_requests(client: httpx.AsyncClient, body: dict, status: int, needle: str) -> None:
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]["message"]


async def token_ids(client: httpx.AsyncClient, model: str, text: str) -> list[int]:
    response = await client.post("/v1/tokenize", json={"model": model, "text": text})
    return [token["id"] for token in response.json()["tokens"]]


async def test_token_id_prompts_score_as_text_and_a_leading_boundary_is_the_start_of_the_line(
    client: httpx.AsyncClient,
) -> None:
    """lm-evaluation-harness sends token ids with its end-of-text token first: that must score as /v1/score."""
    text = "the cat sat"
    ids = await token_ids(client, "word", text)
    boundary = await token_ids(client, "word", "\n")
    assert len(boundary) == 1
    scored = (await client.post("/v1/score", json={"model": "word", "texts": [text]})).json()["results"][0]
    expected = [t["logprob"] for t in scored["tokens"]]
    as_text = await complete(client, model="word", prompt=text, max_tokens=0, echo=True, logprobs=0)
    as_ids = await complete(client, model="word", prompt=ids, max_tokens=0, echo=True, logprobs=0)
    with_start = await complete(client, model="word", prompt=[boundary + ids], max_tokens=0, echo=True, logprobs=0)
    for answer in (as_text, as_ids):  # the first token null, as OpenAI's
        assert answer["choices"][0]["logprobs"]["token_logprobs"] == pytest.approx([None, *expected[1:]], abs=1e-5)
    started = with_start["choices"][0]["logprobs"]
    assert started["token_logprobs"][0] is None and started["top_logprobs"][0] is None
    assert started["token_logprobs"][1:] == pytest.approx(expected, abs=1e-5)
    assert with_start["usage"]["prompt_tokens"] == len(ids) + 1


async def test_n_choices_equal_separate_requests_with_consecutive_seeds(client: httpx.AsyncClient) -> None:
    request = {"prompt": "the ", "max_tokens": 10, "temperature": 0.9, "top_p": 0.9}
    forked = await complete(client, **request, n=3, seed=40)
    alone = [(await complete(client, **request, seed=40 + i))["choices"][0]["text"] for i in range(3)]
    assert [c["text"] for c in forked["choices"]] == alone and [c["index"] for c in forked["choices"]] == [0, 1, 2]
    assert forked["usage"]["completion_tokens"] == 30 and forked["usage"]["prompt_tokens"] == 4
    response = await client.post("/v1/completions", json={**request, "n": 2, "seed": 40, "stream": True})
    chunks = [data for _, data in parse_sse(response.text) if isinstance(data, dict)]
    streamed = ["".join(c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == i) for i in range(2)]
    assert streamed == alone[:2]
    assert sorted(c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]) == [0, 1]


async def test_best_of_returns_the_likeliest_per_token(client: httpx.AsyncClient) -> None:
    request = {"prompt": "a", "max_tokens": 8, "seed": 5, "logprobs": 0}
    every = (await complete(client, **request, n=4))["choices"]
    best = (await complete(client, **request, n=2, best_of=4))["choices"]

    def mean(choice: dict) -> float:
        values = choice["logprobs"]["token_logprobs"]
        return sum(values) / len(values)

    ranked = sorted(every, key=mean, reverse=True)
    assert [c["text"] for c in best] == [c["text"] for c in ranked[:2]] and [c["index"] for c in best] == [0, 1]


async def test_logit_bias_and_min_tokens_change_what_is_generated(client: httpx.AsyncClient) -> None:
    forced = await complete(client, prompt="the", max_tokens=6, seed=1, logit_bias={"3": 100})
    vocab = (await client.post("/v1/detokenize", json={"ids": [3]})).json()["text"]
    assert forced["choices"][0]["text"] == vocab * 6
    (eos,) = await token_ids(client, "word", "\n")
    ends = {"model": "word", "prompt": "the", "max_tokens": 10, "seed": 1, "logit_bias": {str(eos): 100}}
    assert (await complete(client, **ends))["usage"]["completion_tokens"] == 1
    late = await complete(client, **ends, min_tokens=3)
    assert late["usage"]["completion_tokens"] == 4 and late["choices"][0]["finish_reason"] == "stop"


async def test_include_usage_sends_a_last_chunk_with_the_usage(client: httpx.AsyncClient) -> None:
    body = {"prompt": "ab", "max_tokens": 4, "seed": 2, "stream": True, "stream_options": {"include_usage": True}}
    events = parse_sse((await client.post("/v1/completions", json=body)).text)
    assert events[-1] == ("message", "[DONE]")
    last = events[-2][1]
    assert last["choices"] == [] and last["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 4,
        "total_tokens": 6,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert all(data["usage"] is None for _, data in events[:-2])


@pytest.mark.parametrize("prompt", ["", "zzzz qqqq", [""], []])
async def test_edge_prompts_never_fail(client: httpx.AsyncClient, prompt: object) -> None:
    body = {"model": "word", "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 1}
    response = await client.post("/v1/completions", json=body)
    if prompt == []:
        assert response.status_code == 400 and "prompt" in response.json()["error"]["message"]
        return
    assert response.status_code == 200, response.text
    generated = await client.post("/v1/completions", json={**body, "max_tokens": 3, "seed": 1})
    assert generated.status_code == 200, generated.text


async def test_a_shared_prefix_is_fed_once_with_the_same_numbers(make_client: ClientFactory) -> None:
    context = "the cat sat on the mat and the dog sat on the log "
    prompts = [context + ending for ending in ("the end", "a cat", "the dog", "on it")]
    body = {"model": "word", "prompt": prompts, "max_tokens": 0, "echo": True, "logprobs": 2}
    answers = []
    for share in (True, False):
        async with make_client(share_prefixes=share) as client:
            answers.append((await complete(client, **body))["choices"])
            scored = (await client.post("/v1/score", json={"model": "word", "texts": prompts})).json()["results"]
    for shared, alone, score in zip(*answers, scored, strict=True):
        assert shared["logprobs"]["tokens"] == alone["logprobs"]["tokens"]
        assert shared["logprobs"]["token_logprobs"] == pytest.approx(alone["logprobs"]["token_logprobs"], abs=1e-5)
        expected = [None, *[t["logprob"] for t in score["tokens"]][1:]]
        assert shared["logprobs"]["token_logprobs"] == pytest.approx(expected, abs=1e-5)
        assert [set(t or ()) for t in shared["logprobs"]["top_logprobs"]] == [
            set(t or ()) for t in alone["logprobs"]["top_logprobs"]
        ]


def test_prompts_are_grouped_by_the_prefix_they_share() -> None:
    context, other = [5, 6, 7, 8, 9, 10], [5, 6, 1, 2, 3, 4]
    prompts = [[*context, 1], [*other, 9], [*context, 2, 3], [*context, 4], [8]]
    groups = prefix_groups(prompts)
    assert sorted((prefix, sorted(members)) for prefix, members in groups) == [
        ([], [1]),
        ([], [4]),
        (context, [0, 2, 3]),
    ]


async def test_an_unexpected_error_is_a_500_that_ends_cleanly(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No trace, and nothing re-raised to the server (which would close the connection under the client)."""

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    with monkeypatch.context() as patch:
        patch.setattr(completions_serving, "prepare_completion", broken)
        response = await client.post("/v1/completions", json={"prompt": "a"})
    assert response.status_code == 500
    assert response.json() == {"error": {"type": "internal_error", "message": "internal server error"}}
    assert (await client.post("/v1/completions", json={"prompt": "a", "max_tokens": 1})).status_code == 200
