"""The routes that do not go through the engine, on a subword model (byte-level BPE)."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from model.checkpoint import save_checkpoint
from model.subword import SubwordTokenizer
from tests.factories import CHAR_TEXT, tiny_model
from tests.helpers import ClientFactory, call, cut, feed_pieces, parse_sse

TRAIN = [CHAR_TEXT, "영화가 정말 재밌다! 배우들 연기도 좋고\n", "the cat sat on the mat\n"] * 10
HARD = "다람쥐  헌\t쳇바퀴 🐿️ e\u0301 $\\frac{1}{2}$ 😀👍🏽"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("subword-models")
    tokenizer = SubwordTokenizer.train(TRAIN, vocab_size=300)
    save_checkpoint(root / "subword", tiny_model(tokenizer, seed=3), tokenizer, training={"corpus": "tiny"})
    return root


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as c:
        yield c


async def test_tokenize_and_detokenize_round_trip_any_text(client: httpx.AsyncClient) -> None:
    native = await call(client, "POST", "/v1/tokenize", json={"model": "subword", "text": HARD})
    ids = [token["id"] for token in native["tokens"]]
    assert not any(token["unknown"] for token in native["tokens"])
    answer = await call(client, "POST", "/tokenize", json={"model": "subword", "prompt": HARD})
    assert answer["tokens"] == ids
    back = await call(client, "POST", "/detokenize", json={"model": "subword", "tokens": ids})
    assert back == {"prompt": unicodedata.normalize("NFC", HARD)}


async def test_score_reports_bits_per_char_over_the_text(client: httpx.AsyncClient) -> None:
    body = await call(client, "POST", "/v1/score", json={"model": "subword", "texts": [HARD], "eos": True})
    (result,) = body["results"]
    chars = len(unicodedata.normalize("NFC", HARD)) + 1  # the line end scored after it
    assert result["unknown_count"] == 0
    assert result["bits_per_char"] == pytest.approx(-result["logprob"] / math.log(2) / chars)


async def test_feeding_in_pieces_matches_scoring_the_whole_text(client: httpx.AsyncClient) -> None:
    text = "the cat sat on the mat\n영화가 정말  재밌다! 🐿️ 좋고"
    whole = await call(client, "POST", "/v1/score", json={"model": "subword", "texts": [text], "bos": True})
    expected = whole["results"][0]["tokens"]
    for pieces in ([text], [text[:9], text[9:]], cut(text, 3), cut(text, 1)):
        got = await feed_pieces(client, "subword", pieces)
        assert [t["id"] for t in got] == [t["id"] for t in expected], pieces
        assert [t["logprob"] for t in got] == pytest.approx([t["logprob"] for t in expected], abs=1e-5)


async def test_completions_text_offset_counts_characters(client: httpx.AsyncClient) -> None:
    prompt = "a 🐿️ 다람쥐"
    tokenizer_ids = await call(client, "POST", "/tokenize", json={"model": "subword", "prompt": prompt})
    for sent in (prompt, tokenizer_ids["tokens"]):
        body = await call(
            client,
            "POST",
            "/v1/completions",
            json={"model": "subword", "prompt": sent, "max_tokens": 0, "echo": True, "logprobs": 1},
        )
        (choice,) = body["choices"]
        offsets = choice["logprobs"]["text_offset"]
        assert choice["text"] == prompt
        assert offsets == sorted(offsets) and offsets[-1] == prompt.index("쥐")
        assert prompt.index("🐿") in offsets and all(0 <= o < len(prompt) for o in offsets)


async def test_fill_never_offers_part_of_a_character(client: httpx.AsyncClient) -> None:
    for method in ("fast", "exact"):
        body = await call(
            client, "POST", "/v1/fill", json={"model": "subword", "text": "영화가 ___ 재밌다", "method": method}
        )
        assert body["candidates"] and all("\ufffd" not in c["filled"] for c in body["candidates"])


async def test_tokenizer_info_names_the_subword_level(client: httpx.AsyncClient) -> None:
    info = await call(client, "GET", "/tokenizer_info", params={"model": "subword"})
    assert info["tokenizer_class"] == "SubwordTokenizer" and info["level"] == "subword"
    assert info["unk_token"] is None and info["eos_token"] == "\n"


@pytest.mark.parametrize("seed", range(6))
async def test_generated_text_is_whole_characters_and_streamed_equals_whole(
    client: httpx.AsyncClient, seed: int
) -> None:
    """A byte token that begins a character is only followed by one that continues it (no U+FFFD)."""
    body = {"model": "subword", "prompt": "영화가 ", "max_tokens": 40, "seed": seed, "temperature": 1.3}
    whole = await call(client, "POST", "/v1/generate", json=body)
    response = await client.post("/v1/generate", json={**body, "stream": True})
    streamed = "".join(data["text"] for event, data in parse_sse(response.text) if event == "token")
    assert streamed == whole["text"]
    text = whole["text"]
    assert "\ufffd" not in (text[:-1] if whole["finish_reason"] == "length" else text)  # a cut may end mid-character


async def test_a_regex_constraint_holds_on_the_subword_level(client: httpx.AsyncClient) -> None:
    """The constraint reads the tokens' bytes, so a Hangul alternative spans several byte tokens."""
    pattern = "(cat|mat|영화)( (cat|mat|영화)){0,3}"
    finishes = []
    for seed in range(8):
        body = {"model": "subword", "prompt": "the ", "max_tokens": 40, "seed": seed, "guided_regex": pattern}
        answer = await call(client, "POST", "/v1/generate", json=body)
        finishes.append(answer["finish_reason"])
        if answer["finish_reason"] == "stop":
            assert re.fullmatch(pattern, answer["text"]), answer["text"]
    assert "stop" in finishes


async def test_a_session_generation_cut_inside_a_character_finishes_it_next_time(client: httpx.AsyncClient) -> None:
    """One token a call: a call that ends inside a Hangul syllable releases nothing (the session keeps its
    bytes), and a later call releases the whole syllable; never a U+FFFD."""
    session = await call(client, "POST", "/v1/sessions", 201, json={"model": "subword", "prompt": "영화가 정말"})
    texts = []
    for step in range(40):
        body = {"seed": 100 + step, "temperature": 1.3, "max_tokens": 1}
        texts.append((await call(client, "POST", f"/v1/sessions/{session['id']}/generate", json=body))["text"])
    assert "" in texts and any(any(ord(c) > 0x7FF for c in text) for text in texts)
    assert all("\ufffd" not in text for text in texts)
