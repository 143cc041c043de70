"""The root tokenizer endpoints that evaluation clients call (vLLM's shape), over the app."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import ClientFactory


@pytest.mark.parametrize(
    ("model", "eos", "tokenizer_class"), [("char", "\n", "CharTokenizer"), ("word", "<eos>", "WordTokenizer")]
)
async def test_eos_token_is_the_line_end_and_encodes_to_one_id(
    client: httpx.AsyncClient, model: str, eos: str, tokenizer_class: str
) -> None:
    info = (await client.get("/tokenizer_info", params={"model": model})).json()
    assert info["model"] == model and info["tokenizer_class"] == tokenizer_class
    assert info["eos_token"] == eos and info["bos_token"] is None and info["chat_template"] is None
    # What lm-evaluation-harness does to find eos_token_id: tokenize the string, take the first id.
    ids = (await client.post("/tokenize", json={"model": model, "prompt": eos, "add_special_tokens": False})).json()
    assert ids["count"] == 1
    native = (await client.post("/v1/tokenize", json={"model": model, "text": "\n"})).json()
    assert ids["tokens"] == [native["tokens"][0]["id"]]  # the boundary token the server primes a state with
    assert (await client.post("/detokenize", json={"model": model, "tokens": ids["tokens"]})).json() == {"prompt": "\n"}


async def test_default_model_when_none_is_named(client: httpx.AsyncClient) -> None:
    info = (await client.get("/tokenizer_info")).json()
    assert info["model"] == "char" and info["level"] == "char" and info["model_max_length"] == 20_000
    answer = (await client.post("/tokenize", json={"prompt": "hello"})).json()
    assert answer["count"] == 5 and answer["max_model_len"] == 20_000 and answer["token_strs"] is None


async def test_tokenize_matches_v1_tokenize_and_round_trips(client: httpx.AsyncClient) -> None:
    text = "the cat sat\non the mat"
    native = (await client.post("/v1/tokenize", json={"model": "word", "text": text})).json()
    for add_special_tokens in (True, False):  # never adds anything: the server primes a state itself
        answer = (
            await client.post(
                "/tokenize",
                json={
                    "model": "word",
                    "prompt": text,
                    "add_special_tokens": add_special_tokens,
                    "return_token_strs": True,
                },
            )
        ).json()
        assert answer["tokens"] == [t["id"] for t in native["tokens"]]
        assert answer["token_strs"] == ["the", "cat", "sat", "<eos>", "on", "the", "mat"]
    decoded = (await client.post("/detokenize", json={"model": "word", "tokens": answer["tokens"]})).json()
    assert decoded == {"prompt": text}


async def test_empty_prompt_has_no_tokens(client: httpx.AsyncClient) -> None:
    answer = (await client.post("/tokenize", json={"prompt": ""})).json()
    assert answer["tokens"] == [] and answer["count"] == 0
    assert (await client.post("/detokenize", json={"tokens": []})).json() == {"prompt": ""}


async def test_bad_requests(make_client: ClientFactory) -> None:
    async with make_client(max_text_chars=10) as client:
        unknown = await client.get("/tokenizer_info", params={"model": "nope"})
        assert unknown.status_code == 404 and "'nope'" in unknown.json()["error"]["message"]
        unknown = await client.post("/tokenize", json={"model": "nope", "prompt": "hi"})
        assert unknown.status_code == 404 and "'nope'" in unknown.json()["error"]["message"]
        long = await client.post("/tokenize", json={"prompt": "x" * 11})
        assert long.status_code == 413 and "max_text_chars=10" in long.json()["error"]["message"]
        outside = await client.post("/detokenize", json={"tokens": [10**6]})
        assert outside.status_code == 422 and "outside the vocabulary" in outside.json()["error"]["message"]
        chat = await client.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 422 and "messages" in chat.json()["error"]["message"]
