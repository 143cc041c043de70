"""Beam search on /v1/generate: never less likely than greedy, exact with a wide beam, conflicts refused."""

from __future__ import annotations

import asyncio
import itertools
import math
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import torch

from app.engine import Engine, GenerationSettings
from app.settings import Settings
from model.beam_search import BeamSettings, Hypothesis, beam_search, normalised_score
from model.checkpoint import Checkpoint, save_checkpoint
from model.inference import feed_tokens, prime
from model.network import RNNLM
from model.tokenizer import Tokenizer
from tests.factories import char_tokenizer, tiny_model, word_tokenizer


def peaky_model(tokenizer: Tokenizer, seed: int) -> RNNLM:
    """A tiny random model with sharp next-token distributions, where greedy decoding often goes wrong."""
    model = tiny_model(tokenizer, seed=seed)
    with torch.no_grad():
        model.decoder.weight.mul_(6.0)
    return model


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Overrides the shared tiny models: near-uniform ones make every beam equal to greedy."""
    root = tmp_path_factory.mktemp("beam-models")
    for name, tokenizer, seed in (("char", char_tokenizer(), 2), ("word", word_tokenizer(), 0)):
        save_checkpoint(root / name, peaky_model(tokenizer, seed), tokenizer)
    return root


async def post(client: httpx.AsyncClient, path: str, **body: object) -> dict:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def continuation_logprob(client: httpx.AsyncClient, model: str, prompt: str, text: str) -> float:
    """log p(text | prompt) from /v1/score: the two texts' totals differ by exactly that."""
    scored = await post(client, "/v1/score", model=model, texts=[prompt + text, prompt])
    whole, alone = scored["results"]
    return whole["logprob"] - alone["logprob"]


@pytest.mark.parametrize("model", ["char", "word"])
async def test_beam_is_at_least_as_likely_as_greedy_and_reports_its_logprob(
    client: httpx.AsyncClient, model: str
) -> None:
    prompts = ["the", "the cat", "a dog sat", "hello world", "the quick brown fox"]
    gains = []
    for prompt in prompts:
        request = {"model": model, "prompt": prompt, "max_tokens": 6, "stop_at_eos": False}
        greedy = await post(client, "/v1/generate", **request, temperature=0)
        beam = await post(client, "/v1/generate", **request, beam_width=4, length_penalty=0)
        assert beam["finish_reason"] == "length" and beam["usage"]["completion_tokens"] == 6
        assert "".join(t["text"] for t in beam["tokens"]) == beam["text"]
        greedy_logprob = await continuation_logprob(client, model, prompt, greedy["text"])
        beam_logprob = await continuation_logprob(client, model, prompt, beam["text"])
        assert beam["beam"]["logprob"] == pytest.approx(beam_logprob, abs=1e-3)
        assert sum(t["logprob"] for t in beam["tokens"]) == pytest.approx(beam_logprob, abs=1e-3)
        assert beam_logprob >= greedy_logprob - 1e-4
        gains.append(beam_logprob - greedy_logprob)
    assert max(gains) > 1e-3, "on some prompt the beam should find a likelier text than greedy"


async def test_word_beam_finishes_at_eos_with_normalised_score(client: httpx.AsyncClient) -> None:
    beam = await post(client, "/v1/generate", model="word", prompt="the cat", max_tokens=12, beam_width=5)
    summary = beam["beam"]
    length = beam["usage"]["completion_tokens"]
    assert summary == {
        "beam_width": 5,
        "length_penalty": 0.6,
        "logprob": pytest.approx(sum(t["logprob"] for t in beam["tokens"]), abs=1e-6),
        "score": pytest.approx(normalised_score(summary["logprob"], length, 0.6), abs=1e-6),
    }
    if beam["finish_reason"] == "eos":
        assert beam["tokens"][-1]["token"] == "\n" and beam["tokens"][-1]["text"] == ""
        assert "\n" not in beam["text"]
    else:
        assert beam["finish_reason"] == "length" and length == 12


async def search_in_engine(
    model: RNNLM, tokenizer: Tokenizer, prompt: list[int], settings: BeamSettings
) -> list[Hypothesis]:
    """The search as the server runs it (rows in the engine's batch), checked against the same search run alone."""
    engine = Engine(Checkpoint(model=model, tokenizer=tokenizer), Settings())
    engine.start()
    try:
        found = await (await engine.beam(engine.fresh(), settings, prompt)).hypotheses()
    finally:
        engine.close()
    state, pending = prime(model, tokenizer.boundary_id, [prompt])
    if not settings.allow_unk:  # the engine never chooses <unk> unless asked to
        settings = replace(settings, banned=(*settings.banned, tokenizer.unk_id))
    alone = beam_search(model, state, pending[0], settings)
    assert [h.ids for h in found] == [h.ids for h in alone]
    return found


async def test_a_beam_as_wide_as_the_search_space_finds_the_most_likely_sequence() -> None:
    tokenizer = word_tokenizer()
    model = tiny_model(tokenizer, seed=5)
    vocab, steps = tokenizer.vocab_size, 3
    prompt = tokenizer.encode("the cat").ids
    settings = BeamSettings(beam_width=vocab**2, max_tokens=steps, with_greedy=False, allow_unk=True)
    found = await search_in_engine(model, tokenizer, prompt, settings)
    everything = [list(seq) for seq in itertools.product(range(vocab), repeat=steps)]
    states, pendings = prime(model, tokenizer.boundary_id, [prompt] * len(everything))
    logprobs, _, _ = feed_tokens(model, states, pendings, everything)
    totals = torch.stack([row.double().sum() for row in logprobs])
    best = int(torch.argmax(totals))
    assert found[0].ids == everything[best]
    assert found[0].logprob == pytest.approx(float(totals[best]), abs=1e-4)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"stream": True}, "stream"),
        ({"temperature": 0.7}, "temperature"),
        ({"top_k": 5}, "top_k"),
        ({"top_p": 0.9}, "top_p"),
        ({"repetition_penalty": 1.2}, "repetition_penalty"),
        ({"seed": 3}, "seed"),
        ({"stop": ["x"]}, "stop"),
        ({"logprobs": 2}, "logprobs"),
    ],
)
async def test_beam_with_sampling_or_streaming_is_refused_naming_the_conflict(
    client: httpx.AsyncClient, extra: dict, named: str
) -> None:
    response = await client.post("/v1/generate", json={"prompt": "the", "beam_width": 3, **extra})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert named in error["message"] and "beam" in error["message"]
    assert error["conflicts"] == [named]


async def test_bad_beam_settings_are_refused(client: httpx.AsyncClient) -> None:
    for body, status, text in [
        ({"beam_width": 0}, 422, "beam_width"),
        ({"beam_width": 2, "length_penalty": -1}, 422, "length_penalty"),
        ({"beam_width": 17}, 413, "max_beam_width=16"),
        ({"length_penalty": 1.0}, 422, "length_penalty applies only with beam_width > 1"),
        ({"beam_width": 2, "max_tokens": 100000}, 422, "max_tokens_limit"),
    ]:
        response = await client.post("/v1/generate", json={"prompt": "the", **body})
        assert response.status_code == status, (body, response.text)
        assert text in response.json()["error"]["message"], (body, response.text)


async def test_max_tokens_zero_gives_an_empty_beam(client: httpx.AsyncClient) -> None:
    beam = await post(client, "/v1/generate", prompt="the", max_tokens=0, beam_width=3)
    assert beam["text"] == "" and beam["tokens"] == [] and beam["beam"]["logprob"] == 0
    assert not math.isnan(beam["beam"]["score"])


@pytest.mark.parametrize("length_penalty", [0.0, 0.6, 2.0])
async def test_a_wide_beam_with_an_end_token_stops_early_without_missing_the_best(length_penalty: float) -> None:
    tokenizer = word_tokenizer()
    model = peaky_model(tokenizer, seed=0)
    vocab, eos, steps = tokenizer.vocab_size, tokenizer.eos_id, 3
    prompt = tokenizer.encode("a cat").ids
    settings = BeamSettings(vocab**2, steps, length_penalty, eos_id=eos, with_greedy=False)
    found = await search_in_engine(model, tokenizer, prompt, settings)
    # Every answer there is: ends at <eos> (which appears only last) or runs to `steps` tokens.
    answers = [
        list(seq)
        for length in range(1, steps + 1)
        for seq in itertools.product(range(vocab), repeat=length)
        if eos not in seq[:-1] and (seq[-1] == eos or length == steps)
    ]
    states, pendings = prime(model, tokenizer.boundary_id, [prompt] * len(answers))
    logprobs, _, _ = feed_tokens(model, states, pendings, answers)
    scores = [normalised_score(float(row.double().sum()), len(row), length_penalty) for row in logprobs]
    best = max(range(len(answers)), key=scores.__getitem__)
    assert found[0].ids == answers[best]
    assert found[0].score(length_penalty) == pytest.approx(scores[best], abs=1e-4)


async def test_cancelling_a_beam_search_takes_its_rows_out_of_the_engine() -> None:
    """The search runs in the engine's batch and costs its rows (4 beams + the greedy path); a cancelled caller frees them."""
    tokenizer = char_tokenizer()
    engine = Engine(
        Checkpoint(model=peaky_model(tokenizer, seed=2), tokenizer=tokenizer), Settings(max_active_sequences=5)
    )
    engine.start()
    try:
        run = await engine.beam(
            engine.fresh(), BeamSettings(beam_width=4, max_tokens=10_000_000), tokenizer.encode("th").ids
        )
        task = asyncio.create_task(run.hypotheses())
        await asyncio.sleep(0.2)
        assert not task.done()  # still searching: ten million steps take hours
        assert engine.active_generations == 5
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            if engine.active_generations == 0 and not engine.scheduler.pool.rows:
                break
            await asyncio.sleep(0.01)
        assert engine.active_generations == 0 and not engine.scheduler.pool.rows, "the search went on for nobody"
    finally:
        engine.close()


async def test_a_beam_amid_rows_that_come_and_go_equals_the_search_alone() -> None:
    """Rows leaving the pool move others into their slots; the search still sees its own rows in order."""
    tokenizer = char_tokenizer()
    model = peaky_model(tokenizer, seed=2)
    engine = Engine(Checkpoint(model=model, tokenizer=tokenizer), Settings())
    engine.start()
    prompt = tokenizer.encode("th").ids
    settings = BeamSettings(beam_width=4, max_tokens=12, length_penalty=0.0)
    try:
        traffic = [
            await engine.generate(engine.fresh(), GenerationSettings(max_tokens=1 + i % 5, seed=i)) for i in range(12)
        ]
        run = await engine.beam(engine.fresh(), settings, prompt)
        more = [await engine.generate(engine.fresh(), GenerationSettings(max_tokens=2 + i, seed=i)) for i in range(8)]
        found = await run.hypotheses()
        for generation in [*traffic, *more]:
            await generation.collect()
    finally:
        engine.close()
    state, pending = prime(model, tokenizer.boundary_id, [prompt])
    alone = beam_search(model, state, pending[0], replace(settings, banned=(tokenizer.unk_id,)))
    assert [h.ids for h in found] == [h.ids for h in alone]
    assert [h.logprob for h in found] == pytest.approx([h.logprob for h in alone], abs=1e-5)
