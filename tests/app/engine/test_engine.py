"""The engine's contract: every operation starts from a SequenceState and hands back the final one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import torch

from app.engine import Engine, GenerationSettings
from app.errors import EngineBusy
from app.settings import Settings
from model.beam_search import BeamSettings
from model.checkpoint import Checkpoint
from model.inference import SamplingParams
from tests.factories import char_tokenizer, tiny_model
from tests.helpers import wait_until

GREEDY = SamplingParams(temperature=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    tokenizer = char_tokenizer()
    engine = Engine(
        Checkpoint(model=tiny_model(tokenizer), tokenizer=tokenizer),
        Settings(max_active_sequences=4, max_queued_requests=8),
    )
    engine.start()
    yield engine
    engine.close()


def ids_of(engine: Engine, text: str) -> list[int]:
    return engine.tokenizer.encode(text).ids


async def test_feeding_in_pieces_equals_feeding_at_once(engine: Engine) -> None:
    ids = ids_of(engine, "the quick brown fox")
    whole = await engine.feed(engine.fresh(), ids)
    first = await engine.feed(engine.fresh(), ids[:5])
    second = await engine.feed(first.end, ids[5:])
    assert first.logprobs + second.logprobs == pytest.approx(whole.logprobs, abs=1e-5)
    assert second.end.pending == whole.end.pending == ids[-1]
    torch.testing.assert_close(second.end.state[0], whole.end.state[0], rtol=1e-5, atol=1e-6)


async def test_next_token_at_a_state_matches_feeding_the_token(engine: Engine) -> None:
    ids = ids_of(engine, "hello")
    fed = await engine.feed(engine.fresh(), ids)
    dist = await engine.next_token(fed.end)
    probe = ids_of(engine, "w")
    scored = await engine.feed(fed.end, probe)
    assert float(dist.logprobs[probe[0]]) == pytest.approx(scored.logprobs[0], abs=1e-5)
    assert float(dist.logprobs.exp().sum()) == pytest.approx(1.0, abs=1e-5)
    assert dist.end.pending == fed.end.pending  # asking does not consume anything


async def test_generation_continues_from_its_final_state(engine: Engine) -> None:
    """Greedy 12 tokens at once == 5 tokens, then 7 more from the returned state."""
    prompt = ids_of(engine, "over the")
    async with await engine.generate(engine.fresh(), GenerationSettings(max_tokens=12, sampling=GREEDY), prompt) as gen:
        _, whole = await gen.collect()
    async with await engine.generate(engine.fresh(), GenerationSettings(max_tokens=5, sampling=GREEDY), prompt) as gen:
        _, first = await gen.collect()
    async with await engine.generate(first.end, GenerationSettings(max_tokens=7, sampling=GREEDY)) as gen:
        _, second = await gen.collect()
    assert first.token_ids + second.token_ids == whole.token_ids
    assert second.end.pending == whole.end.pending == whole.token_ids[-1]
    torch.testing.assert_close(second.end.state[0], whole.end.state[0], rtol=1e-5, atol=1e-6)
    # the final state is the state after the generated text, as if it had been fed
    fed = await engine.feed(engine.fresh(), prompt + whole.token_ids)
    torch.testing.assert_close(fed.end.state[0], whole.end.state[0], rtol=1e-5, atol=1e-6)


async def test_prompt_logprobs_come_back_with_the_generation(engine: Engine) -> None:
    prompt = ids_of(engine, "hello")
    fed = await engine.feed(engine.fresh(), prompt)
    gen = await engine.generate(engine.fresh(), GenerationSettings(max_tokens=0), prompt, with_logprobs=True)
    async with gen:
        events, result = await gen.collect()
    assert events == [] and result.finish_reason == "length"
    assert result.fed_logprobs == pytest.approx(fed.logprobs, abs=1e-6)


async def test_cancel_frees_the_slot_and_full_engine_refuses(engine: Engine) -> None:
    settings = GenerationSettings(max_tokens=100_000, seed=1)
    generations = [await engine.generate(engine.fresh(), settings) for _ in range(4)]
    with pytest.raises(EngineBusy, match="max_active_sequences=4"):
        await engine.generate(engine.fresh(), settings)
    async for _ in generations[0]:
        break  # leaving the loop cancels
    for generation in generations[1:]:
        generation.cancel()
    await wait_until(lambda: engine.active_generations == 0, "the engine to get there", timeout=2)


async def test_a_full_queue_refuses_more_feeds() -> None:
    tokenizer = char_tokenizer()
    engine = Engine(
        Checkpoint(model=tiny_model(tokenizer), tokenizer=tokenizer), Settings(max_queued_requests=2)
    )  # not started yet
    ids = tokenizer.encode("abc").ids
    waiting = [asyncio.ensure_future(engine.feed(engine.fresh(), ids)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(EngineBusy, match="max_queued_requests=2"):
        await engine.feed(engine.fresh(), ids)
    engine.start()
    try:
        results = await asyncio.gather(*waiting)
        assert results[0].logprobs == pytest.approx(results[1].logprobs)
    finally:
        engine.close()


async def test_long_prompts_are_fed_in_chunks_without_changing_the_result() -> None:
    tokenizer = char_tokenizer()
    checkpoint = Checkpoint(model=tiny_model(tokenizer), tokenizer=tokenizer)
    chunked = Engine(checkpoint, Settings(prefill_tokens_per_step=7))
    whole = Engine(checkpoint, Settings())
    chunked.start()
    whole.start()
    try:
        ids = tokenizer.encode("the quick brown fox jumps over the lazy dog " * 3).ids
        a, b = await asyncio.gather(chunked.feed(chunked.fresh(), ids), whole.feed(whole.fresh(), ids))
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    finally:
        chunked.close()
        whole.close()


async def test_a_failing_tick_fails_its_jobs_and_the_engine_goes_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(token_id: int, previous_id: int | None) -> str:
        raise RuntimeError("broken tokenizer")

    with monkeypatch.context() as patch:
        patch.setattr(engine.tokenizer, "piece", broken)
        with pytest.raises(RuntimeError, match="broken tokenizer"):
            async with await engine.generate(engine.fresh(), GenerationSettings(max_tokens=3)) as gen:
                await gen.collect()
    assert engine.alive and engine.active_generations == 0
    async with await engine.generate(engine.fresh(), GenerationSettings(max_tokens=3)) as gen:
        events, result = await gen.collect()
    assert len(events) == 3 and result.finish_reason == "length"


def tiny_engine(**settings: int) -> Engine:
    tokenizer = char_tokenizer()
    return Engine(Checkpoint(model=tiny_model(tokenizer), tokenizer=tokenizer), Settings(**settings))


async def test_admission_costs_each_job_the_rows_it_holds() -> None:
    """n choices cost n, a beam its width + the greedy path, a next-token query 1; a plain feed costs no row."""
    engine = tiny_engine(max_active_sequences=6, max_queued_requests=1)
    engine.start()
    long = GenerationSettings(max_tokens=100_000, seed=1)
    try:
        three = await engine.generate(engine.fresh(), long, n=3)
        assert engine.active_generations == 3
        with pytest.raises(EngineBusy, match="needs 4 more"):
            await engine.beam(engine.fresh(), BeamSettings(beam_width=3, max_tokens=100_000))
        beam = await engine.beam(engine.fresh(), BeamSettings(beam_width=2, max_tokens=100_000))
        assert engine.active_generations == 6
        with pytest.raises(EngineBusy, match="max_active_sequences=6"):
            await engine.next_token(engine.fresh())
        fed = await engine.feed(engine.fresh(), ids_of(engine, "abc"))  # no decode row needed
        assert len(fed.logprobs) == 3
        three.cancel()
        await wait_until(lambda: engine.active_generations == 3, "the engine to get there", timeout=2)
        assert (await engine.next_token(engine.fresh())).logprobs.shape == (engine.tokenizer.vocab_size,)
        beam.cancel()
        await wait_until(lambda: engine.idle and not engine.scheduler.pool.rows, "the engine to get there", timeout=2)
    finally:
        engine.close()


async def test_a_job_wider_than_the_engine_runs_alone() -> None:
    engine = tiny_engine(max_active_sequences=4)
    engine.start()
    try:
        holder = await engine.generate(engine.fresh(), GenerationSettings(max_tokens=100_000, seed=1))
        with pytest.raises(EngineBusy, match="needs 4 more"):
            await engine.beam(engine.fresh(), BeamSettings(beam_width=8, max_tokens=3))
        holder.cancel()
        await wait_until(lambda: engine.idle, "the engine to get there", timeout=2)
        found = await (await engine.beam(engine.fresh(), BeamSettings(beam_width=8, max_tokens=3))).hypotheses()
        assert found and all(len(h.ids) == 3 for h in found)
    finally:
        engine.close()


async def test_unk_is_never_sampled_unless_allowed(engine: Engine) -> None:
    unk = engine.tokenizer.unk_id
    pushed = SamplingParams(logit_bias=((unk, 8.0),))  # the model would pick <unk> almost every time
    banned = GenerationSettings(max_tokens=200, sampling=pushed, seed=3)
    async with await engine.generate(engine.fresh(), banned, n=3) as gen:
        events = [event async for event in gen]
    assert len(events) == 600 and unk not in {event.token_id for event in events}
    allowed = GenerationSettings(max_tokens=50, sampling=replace(pushed, allow_unk=True), seed=3)
    async with await engine.generate(engine.fresh(), allowed) as gen:
        events, _ = await gen.collect()
    assert sum(event.token_id == unk for event in events) > 25


async def test_a_beam_never_chooses_unk_unless_allowed(engine: Engine) -> None:
    unk = engine.tokenizer.unk_id
    with torch.no_grad():
        engine.model.decoder.bias[unk] += 20.0  # <unk> is by far the likeliest next token
    found = await (await engine.beam(engine.fresh(), BeamSettings(beam_width=3, max_tokens=5))).hypotheses()
    assert found and all(unk not in h.ids for h in found)
    allowed = await (
        await engine.beam(engine.fresh(), BeamSettings(beam_width=3, max_tokens=5, allow_unk=True))
    ).hypotheses()
    assert allowed[0].ids == [unk] * 5
