"""The prefix-state cache: a later prompt starts from an earlier one's state, and nothing a client sees changes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import torch

from app.engine import Engine, GenerationSettings, Hooks
from app.engine.prefix_cache import INTERVAL, PrefixCache
from app.main import create_app
from app.settings import Settings
from model.checkpoint import Checkpoint
from model.sampling import SamplingParams
from tests.factories import char_tokenizer, make_checkpoint, tiny_model
from tests.helpers import running

TOLERANCE = 1e-5  # a prompt fed in two forwards instead of one differs by float rounding only

CONTEXT = "the quick brown fox jumps over the lazy dog and then the dog sat on the mat " * 2
ANSWERS = ["hello world", "the lazy fox", "a dog sat", "brown"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
async def engines() -> AsyncIterator[tuple[Engine, Engine, list[int]]]:
    """The same model with the cache off and on; the list collects what each lookup saved."""
    tokenizer = char_tokenizer()
    checkpoint = Checkpoint(model=tiny_model(tokenizer, seed=4), tokenizer=tokenizer)
    saved: list[int] = []
    off = Engine(checkpoint, Settings(prefix_cache_mb=0))
    on = Engine(checkpoint, Settings(), Hooks(on_prefix_lookup=saved.append))
    off.start()
    on.start()
    yield off, on, saved
    off.close()
    on.close()


async def test_cached_prefixes_give_the_same_logprobs_tops_and_states(
    engines: tuple[Engine, Engine, list[int]],
) -> None:
    off, on, saved = engines
    tokenizer = on.tokenizer
    for answer in ANSWERS * 2:
        ids = tokenizer.encode(CONTEXT + answer).ids
        a = await off.feed(off.fresh(), ids, top_logprobs=3)
        b = await on.feed(on.fresh(), ids, top_logprobs=3)
        assert b.logprobs == pytest.approx(a.logprobs, abs=TOLERANCE)
        assert [[i for i, _ in top] for top in b.top] == [[i for i, _ in top] for top in a.top]
        assert [v for top in b.top for _, v in top] == pytest.approx(
            [v for top in a.top for _, v in top], abs=TOLERANCE
        )
        for x, y in zip(a.end.state, b.end.state, strict=True):
            assert torch.allclose(x, y, atol=TOLERANCE)
        assert a.end.pending == b.end.pending and a.end.history == b.end.history == tuple(ids)
    context = len(tokenizer.encode(CONTEXT).ids)
    assert saved[0] == 0  # the first prompt found nothing
    assert all(s >= context - context % INTERVAL for s in saved[1:])  # every later one reused the context
    assert saved[len(ANSWERS)] == len(tokenizer.encode(CONTEXT + ANSWERS[0]).ids)  # a repeat: nothing left to feed


async def test_next_token_and_seeded_generations_are_the_same_with_the_cache(
    engines: tuple[Engine, Engine, list[int]],
) -> None:
    off, on, saved = engines
    ids = on.tokenizer.encode(CONTEXT).ids
    settings = GenerationSettings(max_tokens=40, sampling=SamplingParams(temperature=0.9, top_p=0.9), seed=7)
    for _ in range(2):
        a = await off.next_token(off.fresh(), ids)
        b = await on.next_token(on.fresh(), ids)
        assert torch.allclose(a.logprobs, b.logprobs, atol=TOLERANCE)
        async with await off.generate(off.fresh(), settings, ids, with_logprobs=True) as gen:
            events_off, result_off = await gen.collect()
        async with await on.generate(on.fresh(), settings, ids, with_logprobs=True) as gen:
            events_on, result_on = await gen.collect()
        assert [e.token_id for e in events_on] == [e.token_id for e in events_off]
        assert result_on.fed_logprobs == pytest.approx(result_off.fed_logprobs, abs=TOLERANCE)
    assert max(saved) == len(ids)


async def test_the_answers_of_one_question_start_right_after_their_context(
    engines: tuple[Engine, Engine, list[int]],
) -> None:
    """The second answer keeps a state where it leaves the first; every later one starts there."""
    _, on, saved = engines
    context = on.tokenizer.encode(CONTEXT).ids
    answers = [on.tokenizer.encode(answer).ids for answer in ("pig", "cow", "hen", "ant")]
    assert len({answer[0] for answer in answers}) == len(answers)  # they part right after the context
    for answer in answers:
        await on.feed(on.fresh(), context + answer)
    assert saved[0] == 0 and saved[1] == len(context) - len(context) % INTERVAL
    assert saved[2:] == [len(context), len(context)]


async def test_an_autocomplete_prefix_growing_by_a_word_feeds_a_flat_number_of_tokens(
    engines: tuple[Engine, Engine, list[int]],
) -> None:
    _, on, saved = engines
    words = (CONTEXT * 3).split()
    fed = []
    for count in range(1, len(words)):
        ids = on.tokenizer.encode(" ".join(words[:count])).ids
        await on.next_token(on.fresh(), ids)
        fed.append(len(ids) - saved[-1])
    assert max(fed[10:]) <= INTERVAL + max(len(w) for w in words) + 1  # never the whole, growing prefix
    assert len(on.tokenizer.encode(" ".join(words)).ids) > 4 * INTERVAL


async def test_a_state_read_back_without_its_history_is_never_served_from_the_cache(
    engines: tuple[Engine, Engine, list[int]],
) -> None:
    _, on, saved = engines
    ids = on.tokenizer.encode(CONTEXT).ids
    first = await on.feed(on.fresh(), ids)
    from_session = type(first.end)(first.end.state, first.end.pending)  # as a session from Redis: no history
    count = len(saved)
    await on.feed(from_session, ids)
    assert len(saved) == count  # not even looked up


def test_least_recently_used_entries_go_first_and_the_byte_bound_holds() -> None:
    state = (torch.zeros(2, 1, 16), torch.zeros(2, 1, 16))
    held: list[int] = []
    one = PrefixCache(max_bytes=10**6, on_lookup=lambda saved: None, on_bytes=held.append)
    one.put((0, 0, 0), state, torch.zeros(3, dtype=torch.float64), None)
    size = one.nbytes  # every entry below is this size: the same shapes
    cache = PrefixCache(max_bytes=3 * size + size // 2, on_lookup=lambda saved: None, on_bytes=held.append)
    for n in (1, 2, 3):
        cache.put((n, n, n), state, torch.zeros(3, dtype=torch.float64), None)
    assert cache.longest((1, 1, 1, 5), 0, logprobs=True, top=0) is not None  # 1 is now the most recent
    cache.put((4, 4, 4), state, torch.zeros(3, dtype=torch.float64), None)
    assert len(cache) == 3 and cache.nbytes == 3 * size <= cache.max_bytes and held[-1] == cache.nbytes
    assert cache.longest((2, 2, 2), 0, logprobs=False, top=0) is None  # the least recently used went
    assert all(cache.longest((n, n, n), 0, logprobs=True, top=0) is not None for n in (1, 3, 4))
    assert cache.longest((4, 4, 4), 0, logprobs=True, top=2) is None  # no top alternatives were kept
    big = (torch.zeros(2, 1, 4096), torch.zeros(2, 1, 4096))
    cache.put((5, 5, 5), big, None, None)  # larger than the whole bound: not kept, nothing evicted
    assert len(cache) == 3 and cache.nbytes == 3 * size


def test_an_entry_without_logprobs_serves_only_callers_that_need_none() -> None:
    state = torch.zeros(1, 1, 4)
    cache = PrefixCache(max_bytes=10_000, on_lookup=lambda saved: None, on_bytes=lambda held: None)
    cache.put((1, 2, 3), state, None, None)
    assert cache.longest((1, 2, 3, 4), 0, logprobs=True, top=0) is None
    found = cache.longest((1, 2, 3, 4), 0, logprobs=False, top=0)
    assert found is not None and found[0] == 3


@pytest.fixture(scope="module")
def twin_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two char models with the same vocabulary (the same ids) and different weights."""
    root = tmp_path_factory.mktemp("twins")
    make_checkpoint(root / "char", level="char", seed=1)
    make_checkpoint(root / "char2", level="char", seed=9)
    return root


def counter(metrics: str, name: str, model: str) -> float:
    found = re.search(rf'{name}{{model="{model}"}} ([0-9.e+]+)', metrics)
    return float(found.group(1)) if found else 0.0


async def answers(client: httpx.AsyncClient, model: str) -> list[object]:
    """Echo scoring through completions and /v1/score, over prompts that share a long context."""
    out: list[object] = []
    for answer in ANSWERS:
        body = {"model": model, "prompt": CONTEXT + answer, "max_tokens": 0, "echo": True, "logprobs": 2}
        completion = (await client.post("/v1/completions", json=body)).json()["choices"][0]["logprobs"]
        out.append((completion["token_logprobs"][1:], completion["top_logprobs"][1:]))
        score = (await client.post("/v1/score", json={"model": model, "texts": [CONTEXT + answer]})).json()
        out.append([token["logprob"] for token in score["results"][0]["tokens"]])
    return out


def assert_close(a: object, b: object) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_close(a[key], b[key])
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_close(x, y)
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=TOLERANCE)
    else:
        assert a == b


async def test_routes_answer_the_same_with_the_cache_on_or_off_and_count_hits(
    twin_models: Path, redis_url: str
) -> None:
    results = {}
    for megabytes in (0, 64):
        settings = Settings(models_dir=twin_models, redis_url=redis_url, torch_threads=1, prefix_cache_mb=megabytes)
        async with running(create_app(settings)) as client:
            results[megabytes] = {model: await answers(client, model) for model in ("char", "char2")}
            metrics = (await client.get("/metrics")).text
        if megabytes:
            assert counter(metrics, "rnnlm_prefix_cache_hits_total", "char") >= len(ANSWERS) * 2 - 1
            assert counter(metrics, "rnnlm_prefix_cache_tokens_saved_total", "char") > 100
            assert counter(metrics, "rnnlm_prefix_cache_bytes", "char") > 0
        else:
            assert counter(metrics, "rnnlm_prefix_cache_hits_total", "char") == 0
    assert_close(results[64], results[0])
    # The same ids on another model: its own numbers, never the first model's cached ones.
    first, second = results[64]["char"][1], results[64]["char2"][1]
    assert isinstance(first, list) and isinstance(second, list)
    assert max(abs(x - y) for x, y in zip(first, second, strict=True)) > 0.01
