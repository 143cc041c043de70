"""vLLM's and OpenAI's completion fields through the real `openai` SDK (async, on the in-process app).

Each field is honoured as a user would notice it, or refused with OpenAI's 400 (the SDK's BadRequestError)
naming it. The sync SDK against a live server: tests/e2e/test_clients.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app.completions.protocol import REFUSED
from model.checkpoint import load_checkpoint
from tests.factories import make_checkpoint
from tests.helpers import ClientFactory, openai_sdk, parse_sse


async def tokenize(client: httpx.AsyncClient, model: str, text: str) -> list[int]:
    response = await client.post("/v1/tokenize", json={"model": model, "text": text})
    return [token["id"] for token in response.json()["tokens"]]


def extra(choice: Any, name: str) -> Any:
    """A field the SDK's types do not declare (vLLM's), as the SDK keeps it."""
    return (choice.model_extra or {})[name]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"foo_bar": 1}, "foo_bar"),  # neither OpenAI's nor vLLM's: OpenAI's "Unrecognized request argument"
        ({"prompt_embeds": "AAAA"}, "prompt_embeds"),
        ({"logits_processors": ["x"]}, "logits_processors"),
        ({"cache_salt": "s"}, "cache_salt"),
        ({"kv_transfer_params": {"a": 1}}, "kv_transfer_params"),
        ({"vllm_xargs": {"a": 1}}, "vllm_xargs"),
        ({"skip_special_tokens": False}, "skip_special_tokens"),
        ({"guided_decoding_backend": "xgrammar", "guided_regex": "a+"}, "guided_decoding_backend"),
        ({"guided_whitespace_pattern": " *"}, "guided_whitespace_pattern"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream: vLLM's 400
        ({"length_penalty": 0.5}, "length_penalty"),  # only with use_beam_search
        ({"use_beam_search": True, "temperature": 0.5}, "use_beam_search"),
        ({"use_beam_search": True, "prompt_logprobs": 1}, "use_beam_search"),
        ({"use_beam_search": True, "stream": True}, "use_beam_search"),
        ({"stop_token_ids": [10**6]}, "stop_token_ids"),
        ({"allowed_token_ids": [10**6]}, "allowed_token_ids"),
        ({"allowed_token_ids": [0]}, "allowed_token_ids"),  # only <unk>: nothing left to draw
        ({"allowed_token_ids": [3], "guided_regex": "a+"}, "allowed_token_ids"),
        ({"bad_words": [" "]}, "bad_words"),  # an empty word
        ({"top_k": -2}, "top_k"),
        ({"seed": 2**63}, "seed"),
        ({"prompt_logprobs": 21}, "prompt_logprobs"),  # over max_logprobs
        ({"truncation_side": "middle"}, "truncation_side"),
    ],
)
async def test_a_field_that_cannot_be_honoured_is_a_400_naming_it(
    client: httpx.AsyncClient, fields: dict[str, Any], field: str
) -> None:
    async with openai_sdk(client) as api:
        with pytest.raises(openai.BadRequestError) as refused:
            await api.completions.create(model="char", prompt="the ", max_tokens=3, extra_body=fields)
    body = refused.value.body
    assert refused.value.status_code == 400 and isinstance(body, dict)
    assert body["type"] == "invalid_request_error" and body["param"] == field and field in refused.value.message
    if field == "foo_bar":
        assert refused.value.message.startswith("Error code: 400") and "Unrecognized request argument" in str(body)


def test_every_refused_field_is_one_of_vllms() -> None:
    assert set(REFUSED) == {
        "prompt_embeds",
        "logits_processors",
        "cache_salt",
        "kv_transfer_params",
        "vllm_xargs",
        "skip_special_tokens",
        "guided_decoding_backend",
        "guided_whitespace_pattern",
    }


async def test_priority_is_taken_and_changes_nothing_but_the_feeding_order(client: httpx.AsyncClient) -> None:
    """The order itself is the engine's test (tests/app/engine/test_engine.py); here the same seed, the same text."""
    async with openai_sdk(client) as api:
        texts = [
            (await api.completions.create(model="char", prompt="the ", max_tokens=6, seed=2, extra_body=fields))
            .choices[0]
            .text
            for fields in ({}, {"priority": -3}, {"priority": 10})
        ]
        streamed = await api.completions.create(
            model="char", prompt=["the ", "a"], max_tokens=6, seed=2, stream=True, extra_body={"priority": 1}
        )
        assert [chunk async for chunk in streamed]
    assert texts[0] == texts[1] == texts[2]


async def test_null_means_the_default(client: httpx.AsyncClient) -> None:
    async with openai_sdk(client) as api:
        plain = await api.completions.create(model="char", prompt="the ", seed=7)
        nulls = await api.completions.create(
            model="char",
            prompt="the ",
            seed=7,
            max_tokens=None,
            temperature=None,
            top_p=None,
            n=None,
            stop=None,
            echo=None,
            presence_penalty=None,
            frequency_penalty=None,
            best_of=None,
            logprobs=None,
            logit_bias=None,
            suffix=None,
            user=None,
            stream=None,
            extra_body={"top_k": None, "min_p": None, "repetition_penalty": None, "stop_token_ids": None},
        )
        streamed = await api.completions.create(
            model="char", prompt="the ", seed=7, stream=True, stream_options={"include_usage": None}
        )
        chunks = [chunk async for chunk in streamed]
    assert nulls.choices[0].text == plain.choices[0].text and plain.usage is not None
    assert plain.usage.completion_tokens == 16  # OpenAI's default max_tokens
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert all(c.usage is None for c in chunks)  # include_usage null: its default, false


async def test_top_k_minus_one_is_off_and_any_64_bit_seed_is_taken(client: httpx.AsyncClient) -> None:
    async with openai_sdk(client) as api:

        async def text(**fields: Any) -> str:
            answer = await api.completions.create(model="char", prompt="the ", max_tokens=8, **fields)
            return answer.choices[0].text

        assert await text(seed=3, extra_body={"top_k": -1}) == await text(seed=3)
        assert await text(seed=-5) == await text(seed=-5)  # mapped, as vLLM maps it: still a seed
        assert await text(seed=-5) != await text(seed=5)
        for seed in (2**63 - 1, -(2**63), -1):  # -1: a random seed, as vLLM takes it
            assert len(await text(seed=seed)) == 8


async def test_stop_token_ids_end_the_text_and_include_stop_str_in_output_keeps_them(
    client: httpx.AsyncClient,
) -> None:
    request: dict[str, Any] = {"model": "char", "prompt": "the ", "max_tokens": 12, "seed": 11}
    async with openai_sdk(client) as api:
        free = await api.completions.create(**request, extra_body={"return_token_ids": True})
        ids = extra(free.choices[0], "token_ids")
        stop = ids[4]
        cut = ids.index(stop)
        hidden = await api.completions.create(
            **request, extra_body={"stop_token_ids": [stop], "return_token_ids": True}
        )
        kept = await api.completions.create(
            **request, extra_body={"stop_token_ids": [stop], "include_stop_str_in_output": True}
        )
        early = await api.completions.create(**request, extra_body={"stop_token_ids": [stop], "min_tokens": cut + 2})
    text = free.choices[0].text
    assert hidden.choices[0].text == text[:cut] and hidden.choices[0].finish_reason == "stop"
    assert extra(hidden.choices[0], "stop_reason") == stop and extra(hidden.choices[0], "token_ids") == ids[: cut + 1]
    assert kept.choices[0].text == text[: cut + 1] and kept.choices[0].finish_reason == "stop"
    assert stop not in (await tokenize(client, "char", early.choices[0].text))[: cut + 2]


async def test_include_stop_str_in_output_keeps_a_stop_string(client: httpx.AsyncClient) -> None:
    request: dict[str, Any] = {"model": "char", "prompt": "the ", "max_tokens": 12, "seed": 11}
    async with openai_sdk(client) as api:
        text = (await api.completions.create(**request)).choices[0].text
        stop = text[5:7]
        before = text[: text.index(stop)]
        cut = await api.completions.create(**request, stop=[stop])
        kept = await api.completions.create(**request, stop=[stop], extra_body={"include_stop_str_in_output": True})
        streamed = await api.completions.create(
            **request, stop=[stop], stream=True, extra_body={"include_stop_str_in_output": True}
        )
        chunks = [chunk async for chunk in streamed]
    assert cut.choices[0].text == before and extra(cut.choices[0], "stop_reason") == stop
    assert kept.choices[0].text == before + stop and kept.choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].text for c in chunks) == before + stop
    assert chunks[-1].choices[0].finish_reason == "stop" and extra(chunks[-1].choices[0], "stop_reason") == stop


async def test_ignore_eos_keeps_a_word_model_going(client: httpx.AsyncClient) -> None:
    (eos,) = await tokenize(client, "word", "\n")
    request: dict[str, Any] = {
        "model": "word",
        "prompt": "the",
        "max_tokens": 6,
        "seed": 1,
        "logit_bias": {str(eos): 30},
    }
    async with openai_sdk(client) as api:
        ends = await api.completions.create(**request)
        going = await api.completions.create(**request, extra_body={"ignore_eos": True})
    assert ends.usage is not None and ends.usage.completion_tokens == 1 and ends.choices[0].finish_reason == "stop"
    assert going.usage is not None and going.usage.completion_tokens == 6 and going.choices[0].finish_reason == "length"


@pytest.mark.parametrize("model", ["char", "word"])
async def test_allowed_token_ids_are_the_only_tokens_generated(client: httpx.AsyncClient, model: str) -> None:
    allowed = [3, 5, 8]
    async with openai_sdk(client) as api:
        for seed in range(5):
            answer = await api.completions.create(
                model=model,
                prompt="the",
                max_tokens=10,
                seed=seed,
                extra_body={"allowed_token_ids": allowed, "return_token_ids": True, "ignore_eos": True},
            )
            assert set(extra(answer.choices[0], "token_ids")) <= set(allowed)
        streamed = await api.completions.create(
            model=model, prompt="the", max_tokens=10, seed=0, stream=True, extra_body={"allowed_token_ids": allowed}
        )
        assert [chunk async for chunk in streamed]


@pytest.mark.parametrize(("model", "size"), [("char", 1), ("char", 2), ("word", 1)])
async def test_a_bad_word_is_never_generated(client: httpx.AsyncClient, model: str, size: int) -> None:
    """The word is taken from what the same seeds generate freely, so the ban has something to prevent."""
    prompt = "the "
    async with openai_sdk(client) as api:
        free = [
            (await api.completions.create(model=model, prompt=prompt, max_tokens=20, seed=seed)).choices[0].text
            for seed in range(6)
        ]
        pieces = free[0].split() if model == "word" else [free[0][i : i + size] for i in range(len(free[0]) - size)]
        word = next(piece for piece in pieces if piece.strip() == piece and piece)
        assert any(word in text for text in free)
        for seed in range(6):
            answer = await api.completions.create(
                model=model, prompt=prompt, max_tokens=20, seed=seed, extra_body={"bad_words": [word]}
            )
            text = answer.choices[0].text
            assert (word not in text.split()) if model == "word" else (word not in prompt[-size + 1 :] + text)


async def test_prompt_logprobs_are_vllms_and_equal_v1_score(client: httpx.AsyncClient) -> None:
    prompt = "the cat sat"
    async with openai_sdk(client) as api:
        answer = await api.completions.create(
            model="word",
            prompt=prompt,
            max_tokens=1,
            seed=1,
            extra_body={"prompt_logprobs": 2, "return_token_ids": True},
        )
    choice = answer.choices[0]
    ids, logprobs = extra(choice, "prompt_token_ids"), extra(choice, "prompt_logprobs")
    assert ids == await tokenize(client, "word", prompt) and len(logprobs) == len(ids) and logprobs[0] is None
    scored = (await client.post("/v1/score", json={"model": "word", "texts": [prompt]})).json()["results"][0]
    for token, entry, expected in zip(ids[1:], logprobs[1:], scored["tokens"][1:], strict=True):
        assert entry[str(token)]["logprob"] == pytest.approx(expected["logprob"], abs=1e-5)
        assert 2 <= len(entry) <= 3  # the token and the two likeliest
        ranked = sorted((e for e in entry.values() if e["rank"] is not None), key=lambda e: e["rank"])
        assert [e["rank"] for e in ranked][:2] == [1, 2] and ranked[0]["logprob"] >= ranked[1]["logprob"]


async def test_return_token_ids_and_tokens_as_token_ids(client: httpx.AsyncClient) -> None:
    async with openai_sdk(client) as api:
        answer = await api.completions.create(
            model="word",
            prompt="the cat",
            max_tokens=4,
            seed=2,
            logprobs=1,
            extra_body={"return_token_ids": True, "return_tokens_as_token_ids": True, "ignore_eos": True},
        )
    choice = answer.choices[0]
    ids = extra(choice, "token_ids")
    assert extra(choice, "prompt_token_ids") == await tokenize(client, "word", "the cat")
    detokenized = (await client.post("/v1/detokenize", json={"model": "word", "ids": ids})).json()["text"]
    assert choice.text.strip() == detokenized.strip() and len(ids) == 4
    assert choice.logprobs is not None and choice.logprobs.tokens == [f"token_id:{i}" for i in ids]
    assert choice.logprobs.top_logprobs is not None
    assert all(all(key.startswith("token_id:") for key in top) for top in choice.logprobs.top_logprobs)


async def test_truncate_prompt_tokens_keeps_the_last_or_first_tokens(client: httpx.AsyncClient) -> None:
    async with openai_sdk(client) as api:

        async def answer(prompt: str, **fields: Any) -> Any:
            return await api.completions.create(
                model="char", prompt=prompt, max_tokens=6, seed=5, echo=True, extra_body=fields
            )

        left = await answer("hello world", truncate_prompt_tokens=4)
        right = await answer("hello world", truncate_prompt_tokens=4, truncation_side="right")
        untouched = await answer("hello world", truncate_prompt_tokens=-1)
        assert left.choices[0].text == (await answer("orld")).choices[0].text
        assert right.choices[0].text == (await answer("hell")).choices[0].text
        assert untouched.choices[0].text == (await answer("hello world")).choices[0].text
    assert left.usage is not None and left.usage.prompt_tokens == 4


async def test_cached_tokens_report_what_the_prefix_cache_spared(client: httpx.AsyncClient) -> None:
    prompt = "the cat sat on the mat and the dog sat on the log " * 2
    async with openai_sdk(client) as api:
        first = await api.completions.create(model="char", prompt=prompt, max_tokens=2, seed=1)
        again = await api.completions.create(model="char", prompt=prompt, max_tokens=2, seed=1)
    assert first.usage is not None and again.usage is not None
    assert first.usage.prompt_tokens_details is not None and again.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert again.usage.prompt_tokens_details.cached_tokens == len(prompt) == again.usage.prompt_tokens
    assert again.choices[0].text == first.choices[0].text
    assert first.system_fingerprint == again.system_fingerprint and (first.system_fingerprint or "").startswith(
        "rnnlm-"
    )


async def test_logprobs_hold_the_sampled_token_and_echo_gives_the_first_none(client: httpx.AsyncClient) -> None:
    async with openai_sdk(client) as api:
        for k in (0, 1, 3):
            answer = await api.completions.create(
                model="char", prompt="hello", max_tokens=10, seed=k, logprobs=k, echo=True, temperature=1.5
            )
            logprobs = answer.choices[0].logprobs
            assert logprobs is not None and logprobs.top_logprobs is not None and logprobs.token_logprobs is not None
            assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
            for token, value, top in zip(
                (logprobs.tokens or [])[1:], logprobs.token_logprobs[1:], logprobs.top_logprobs[1:], strict=True
            ):
                assert top is not None and top[token] == value and len(top) <= k + 1
                assert len(top) == k + 1 or max(top.values()) >= value


async def test_a_list_of_prompts_streams_interleaved_and_each_finish_rides_on_its_last_token(
    client: httpx.AsyncClient,
) -> None:
    request: dict[str, Any] = {"model": "char", "prompt": ["the ", "a", "hello"], "max_tokens": 6, "seed": 3, "n": 2}
    async with openai_sdk(client) as api:
        whole = await api.completions.create(**request)
        stream = await api.completions.create(
            **request,
            stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},  # type: ignore[typeddict-unknown-key]
        )
        chunks = [chunk async for chunk in stream]
    assert len(whole.choices) == 6
    texts = {c.index: c.text for c in whole.choices}
    streamed = {i: "".join(c.choices[0].text for c in chunks[:-1] if c.choices[0].index == i) for i in range(6)}
    assert streamed == texts
    finishes = [c.choices[0].index for c in chunks[:-1] if c.choices[0].finish_reason]
    assert sorted(finishes) == list(range(6))
    assert all(c.choices[0].text for c in chunks[:-1])  # every chunk a token's: no empty closing chunk
    # continuous usage: each chunk counts its choice's tokens so far; the last chunk is the whole usage
    for i in range(6):
        counts = [c.usage.completion_tokens for c in chunks[:-1] if c.choices[0].index == i and c.usage]
        assert counts == list(range(1, 7))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 36


async def test_beam_search_is_the_engines(client: httpx.AsyncClient) -> None:
    async with openai_sdk(client) as api:
        answer = await api.completions.create(
            model="char", prompt="the ", max_tokens=6, n=2, extra_body={"use_beam_search": True, "length_penalty": 0.6}
        )
        again = await api.completions.create(
            model="char", prompt="the ", max_tokens=6, n=2, extra_body={"use_beam_search": True, "length_penalty": 0.6}
        )
    assert [c.text for c in again.choices] == [c.text for c in answer.choices]
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens == 4  # the prompt's state, from the first search
    native = (
        await client.post("/v1/generate", json={"model": "char", "prompt": "the ", "max_tokens": 6, "beam_width": 2})
    ).json()
    assert [c.index for c in answer.choices] == [0, 1] and answer.choices[0].text == native["text"]
    assert answer.choices[0].text != answer.choices[1].text


async def test_invocations_routes_by_the_body(client: httpx.AsyncClient) -> None:
    body = {"model": "char", "prompt": "the ", "max_tokens": 5, "seed": 2}
    via = await client.post("/invocations", json=body)
    direct = await client.post("/v1/completions", json=body)
    assert via.status_code == 200 and via.json()["choices"] == direct.json()["choices"]
    streamed = await client.post("/invocations", json={**body, "stream": True})
    assert parse_sse(streamed.text)[-1] == ("message", "[DONE]")
    chat = await client.post("/invocations", json={"model": "char", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 404 and chat.json()["error"]["type"] == "unsupported"
    for bad in ({"model": "char"}, {**body, "foo_bar": 1}, {**body, "max_tokens": -1}):
        refused = await client.post("/invocations", json=bad)
        assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error", bad


async def test_tokenize_returns_the_vocabularys_token_strings(client: httpx.AsyncClient) -> None:
    answer = (
        await client.post("/tokenize", json={"model": "word", "prompt": "the zebra", "return_token_strs": True})
    ).json()
    assert answer["token_strs"] == ["the", "<unk>"]


@pytest.fixture(scope="module")
def subword_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("subword-models")
    make_checkpoint(root / "subword", level="subword", cell="lstm", seed=3)
    return root


async def test_a_subword_bad_word_is_never_generated_and_a_partial_allowed_token_is_refused(
    make_client: ClientFactory, subword_dir: Path
) -> None:
    """A subword word is several tokens, spelled differently at a line start and after a space: both are banned."""
    async with make_client(models_dir=subword_dir) as client, openai_sdk(client) as api:
        free = [
            (await api.completions.create(model="subword", prompt="the ", max_tokens=24, seed=seed)).choices[0].text
            for seed in range(6)
        ]
        words = [w for text in free for w in text.split() if len(w) >= 3]
        word = max(words, key=lambda w: sum(w in text for text in free))
        tokens = await tokenize(client, "subword", word)
        for seed in range(6):
            answer = await api.completions.create(
                model="subword", prompt="the ", max_tokens=24, seed=seed, extra_body={"bad_words": [word]}
            )
            assert word not in answer.choices[0].text, (word, tokens)
        partial = min(load_checkpoint(subword_dir / "subword").tokenizer.partial_ids)  # a byte of a character
        with pytest.raises(openai.BadRequestError, match="only part of a character"):
            await api.completions.create(model="subword", prompt="the ", extra_body={"allowed_token_ids": [partial]})
