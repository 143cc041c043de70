"""Constrained decoding in the engine: what a constraint lets through, how it ends, and what it refuses."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import jsonschema_rs
import pytest
import torch

from app.engine import Constraint, Engine, GenerationResult, GenerationSettings
from app.engine.constraint import ConstraintLimits, ConstraintVocabulary
from app.errors import ConstraintError
from app.settings import Settings
from model.beam_search import BeamSettings
from model.checkpoint import Checkpoint
from model.sampling import SamplingParams
from model.tokenizer import EOS, UNK, CharTokenizer, Tokenizer, WordTokenizer
from tests.factories import char_tokenizer, subword_tokenizer, tiny_model, word_tokenizer
from tests.helpers import JSON_TEXT, PERSON

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def start_engine(tokenizer: Tokenizer, rows: int = 64) -> Engine:
    engine = Engine(
        Checkpoint(model=tiny_model(tokenizer), tokenizer=tokenizer),
        Settings(max_active_sequences=rows, max_queued_requests=8),
    )
    engine.start()
    return engine


@pytest.fixture
async def char_engine() -> AsyncIterator[Engine]:
    engine = start_engine(char_tokenizer())
    yield engine
    engine.close()


@pytest.fixture
async def word_engine() -> AsyncIterator[Engine]:
    engine = start_engine(word_tokenizer())
    yield engine
    engine.close()


@pytest.fixture
async def json_engine() -> AsyncIterator[Engine]:
    engine = start_engine(CharTokenizer.build(JSON_TEXT))
    yield engine
    engine.close()


async def texts(
    engine: Engine, constraint: Constraint, prompt: str = "", n: int = 50, seed: int = 0, **options: object
) -> list[tuple[str, GenerationResult]]:
    """n seeded choices under `constraint` after `prompt`: (text, result) each."""
    ids = engine.tokenizer.encode(prompt).ids
    await engine.compile_constraint(constraint, engine.fresh(), ids)
    settings = GenerationSettings(
        max_tokens=int(options.pop("max_tokens", 40)),  # type: ignore[call-overload]
        seed=seed,
        constraint=constraint,
        eos_id=getattr(engine.tokenizer, "eos_id", None),
        **options,  # type: ignore[arg-type]
    )
    found: list[list[str]] = [[] for _ in range(n)]
    async with await engine.generate(engine.fresh(), settings, ids, n=n) as generation:
        async for event in generation:
            found[event.choice].append(event.text)
    results = generation.results
    return [("".join(pieces), result) for pieces, result in zip(found, results, strict=True) if result is not None]


@pytest.mark.parametrize("prompt", ["", "the "])
async def test_char_regex_every_finished_text_matches(char_engine: Engine, prompt: str) -> None:
    pattern = "[a-z]{1,5}( [a-z]{1,5}){0,2}"
    out = [
        item for seed in range(4) for item in await texts(char_engine, Constraint("regex", pattern), prompt, seed=seed)
    ]
    assert len(out) == 200
    for text, result in out:
        assert result.finish_reason == "stop"
        assert re.fullmatch(pattern, text), text


@pytest.mark.parametrize(("prompt", "pattern"), [("", "(the|a)( [a-z]+){0,3}"), ("the cat", "( [a-z]+){1,4}")])
async def test_word_regex_is_about_the_text_at_a_line_start_and_mid_line(
    word_engine: Engine, prompt: str, pattern: str
) -> None:
    """At a line start the first word has no space before it; mid-line it has (the text shows it)."""
    out = [
        item for seed in range(4) for item in await texts(word_engine, Constraint("regex", pattern), prompt, seed=seed)
    ]
    assert len(out) == 200
    for text, result in out:
        assert result.finish_reason == "stop"
        assert re.fullmatch(pattern, text), text
        assert word_engine.tokenizer.unk_id not in result.token_ids


async def test_choice_returns_one_of_the_choices(char_engine: Engine, word_engine: Engine) -> None:
    for engine, options in ((char_engine, ["yes", "no", "hello world"]), (word_engine, ["the cat", "a dog", "on"])):
        for text, result in await texts(engine, Constraint.choice(options)):
            assert text in options
            assert result.finish_reason == "stop"


async def test_json_schema_output_validates_whenever_it_stops(json_engine: Engine) -> None:
    constraint = Constraint("json", json.dumps(PERSON))
    out = await texts(json_engine, constraint, max_tokens=60, sampling=SamplingParams(temperature=0.7))
    stopped = [text for text, result in out if result.finish_reason == "stop"]
    assert stopped, "no generation completed its JSON"
    for text in stopped:
        jsonschema_rs.validate(PERSON, json.loads(text))


async def test_a_text_cut_by_max_tokens_is_a_valid_prefix(char_engine: Engine) -> None:
    options = ["hello world", "the quick fox"]
    for text, result in await texts(char_engine, Constraint.choice(options), max_tokens=4):
        assert result.finish_reason == "length"
        assert len(text) == 4 and any(option.startswith(text) for option in options)


async def test_the_logprobs_reported_are_the_models_own(char_engine: Engine) -> None:
    """The mask changes what is drawn, never the log-probability reported for it."""
    prompt = char_engine.tokenizer.encode("the ").ids
    settings = GenerationSettings(
        max_tokens=1, sampling=SamplingParams(temperature=0), constraint=Constraint("regex", "z")
    )
    await char_engine.compile_constraint(settings.constraint, char_engine.fresh(), prompt)  # type: ignore[arg-type]
    async with await char_engine.generate(char_engine.fresh(), settings, prompt) as generation:
        events, _ = await generation.collect()
    fed = await char_engine.feed(char_engine.fresh(), prompt)
    dist = await char_engine.next_token(fed.end)
    assert events[0].piece == "z"
    assert events[0].logprob == pytest.approx(float(dist.logprobs[events[0].token_id]), abs=1e-5)


async def test_a_seeded_constrained_row_is_the_same_alone_and_amid_others(char_engine: Engine) -> None:
    constraint = Constraint("regex", "[a-z ]{3,30}")
    settings = GenerationSettings(max_tokens=30, seed=7, constraint=constraint)
    prompt = char_engine.tokenizer.encode("over the").ids
    await char_engine.compile_constraint(constraint, char_engine.fresh(), prompt)

    async def one(settings: GenerationSettings) -> list[int]:
        async with await char_engine.generate(char_engine.fresh(), settings, prompt) as generation:
            _, result = await generation.collect()
        return result.token_ids

    alone = await one(settings)
    free = GenerationSettings(max_tokens=30)
    crowd = await asyncio.gather(*[one(free) for _ in range(15)], one(settings), *[one(free) for _ in range(15)])
    assert crowd[15] == alone


async def test_unk_is_never_allowed_even_when_the_request_allows_it(word_engine: Engine) -> None:
    out = await texts(
        word_engine, Constraint("regex", "[a-z<> ]+"), max_tokens=8, sampling=SamplingParams(allow_unk=True)
    )
    for _, result in out:
        assert word_engine.tokenizer.unk_id not in result.token_ids


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        (Constraint("regex", "(ab"), "unclosed group"),
        (Constraint("json", '{"type": "objectx"}'), "objectx"),
        (Constraint("json", "{not json"), "not JSON"),
        (Constraint("grammar", "start: missing_rule"), "missing_rule"),
        (Constraint.choice([]), "at least one"),
        (Constraint.choice(["zebra"]), "no token of this model's vocabulary can start"),
        (Constraint("regex", "x" * 70_000), "over the bound"),
    ],
)
async def test_unusable_constraints_are_refused_with_the_reason(
    word_engine: Engine, constraint: Constraint, message: str
) -> None:
    with pytest.raises(ConstraintError, match=re.escape(message)):
        await word_engine.compile_constraint(constraint, word_engine.fresh())


def test_a_word_vocabulary_cannot_start_a_character_it_lacks() -> None:
    vocabulary = ConstraintVocabulary(word_tokenizer())
    with pytest.raises(ConstraintError, match="no token"):
        vocabulary.compile(Constraint("regex", "[0-9]+"), at_line_start=True)
    assert vocabulary.compile(Constraint("regex", "the|a"), at_line_start=True)  # no space before the first word
    with pytest.raises(ConstraintError, match="no token"):
        vocabulary.compile(Constraint("regex", "the|a"), at_line_start=False)  # mid-line the text is " the"


def test_compiled_constraints_are_cached_by_their_text_least_recent_out() -> None:
    vocabulary = ConstraintVocabulary(char_tokenizer(), ConstraintLimits(cache_size=2))
    for pattern in ("a+", "b+", "a+", "c+"):
        vocabulary.compile(Constraint("regex", pattern), at_line_start=False)
    assert [key[1] for key in vocabulary._compiled] == ["a+", "c+"]


def test_masks_never_allow_unk() -> None:
    tokenizer = char_tokenizer()
    vocabulary = ConstraintVocabulary(tokenizer)
    matcher = vocabulary.compile(Constraint("regex", "(.|\n)*"), at_line_start=False).matcher
    allowed = vocabulary.masks([matcher])[0]
    assert not allowed[tokenizer.unk_id]
    assert int(allowed.sum()) == tokenizer.vocab_size - 1  # the rest, the end token ("\n") included


async def test_a_constrained_beam_search_ends_where_the_text_is_complete(
    char_engine: Engine, word_engine: Engine
) -> None:
    for engine, pattern, prompt in (
        (char_engine, "[a-z]{2,6}( [a-z]{2,6}){0,2}", "the "),
        (word_engine, "(the|a)( [a-z]+){1,3}", ""),
    ):
        constraint = Constraint("regex", pattern)
        ids = engine.tokenizer.encode(prompt).ids
        await engine.compile_constraint(constraint, engine.fresh(), ids)
        run = await engine.beam(engine.fresh(), BeamSettings(beam_width=4, max_tokens=30), ids, constraint)
        hypotheses = await run.hypotheses()
        assert hypotheses
        for hypothesis in hypotheses:
            if hypothesis.finish == "eos":
                assert hypothesis.ids[-1] == engine.tokenizer.boundary_id
                previous = ids[-1] if ids else engine.tokenizer.boundary_id
                text = engine.tokenizer.decode(hypothesis.ids[:-1], previous)
                assert re.fullmatch(pattern, text), text
        assert hypotheses[0].finish == "eos"


async def test_a_constrained_beam_ranks_by_the_models_own_logprobs(word_engine: Engine) -> None:
    """Masking never renormalises: the best choice's log-probability is what scoring it (and the end) gives."""
    options = ["the cat", "a dog", "on the mat"]
    constraint = Constraint.choice(options)
    await word_engine.compile_constraint(constraint, word_engine.fresh())
    search = BeamSettings(beam_width=3, max_tokens=6, with_greedy=False)
    hypotheses = await (await word_engine.beam(word_engine.fresh(), search, None, constraint)).hypotheses()
    scored = {}
    for option in options:
        ids = [*word_engine.tokenizer.encode(option).ids, word_engine.tokenizer.boundary_id]
        scored[option] = sum((await word_engine.feed(word_engine.fresh(), ids)).logprobs)
    best = word_engine.tokenizer.decode(hypotheses[0].ids[:-1], word_engine.tokenizer.boundary_id)
    assert best == max(scored, key=lambda option: scored[option])
    assert hypotheses[0].logprob == pytest.approx(scored[best], abs=1e-4)


async def test_a_word_is_allowed_only_where_the_text_can_go_on_after_it() -> None:
    """ "w21" is a prefix of "w212" as text, but a word model's next token starts a new word: never drawn."""
    tokenizer = WordTokenizer([UNK, EOS, *(f"w{i}" for i in range(300))])
    engine = start_engine(tokenizer)
    try:
        pattern = "w[0-9]*[02468]( w[0-9]*[02468])*"
        for prompt in ("", "w1"):  # at a line start, and mid-line (the text then starts with a space)
            regex = pattern if not prompt else f" {pattern}"
            out = await texts(engine, Constraint("regex", regex), prompt, n=20, max_tokens=8)
            for text, result in out:
                assert re.fullmatch(regex, text), text
                assert result.finish_reason == "stop" or len(result.token_ids) == 8  # never cut short by a dead end
    finally:
        engine.close()


@pytest.mark.parametrize("stop", [(), ("zz",)])  # masks computed while the next forward runs, or at once
async def test_a_dead_end_ends_with_length_and_the_exact_state(char_engine: Engine, stop: tuple[str, ...]) -> None:
    """After "ab" the grammar needs "@", which the vocabulary lacks: the text stops there, a valid prefix.

    (A grammar can still dead-end: only a choice's options and a regex are pruned to what the vocabulary spells.)
    """
    prompt = char_engine.tokenizer.encode("the ").ids
    settings = GenerationSettings(max_tokens=10, constraint=Constraint("grammar", 'start: "ab@"'), stop=stop)
    async with await char_engine.generate(char_engine.fresh(), settings, prompt) as generation:
        events, result = await generation.collect()
    assert "".join(event.text for event in events) == "ab" and result.finish_reason == "length"
    fed = await char_engine.feed(char_engine.fresh(), char_engine.tokenizer.encode("the ab").ids)
    assert result.end.pending == fed.end.pending
    after_generation = await char_engine.next_token(result.end)
    after_feeding = await char_engine.next_token(fed.end)
    torch.testing.assert_close(after_generation.logprobs, after_feeding.logprobs, rtol=1e-5, atol=1e-5)


LANGUAGES = ["Python", "Java", "JavaScript", "C++", "C#"]


@pytest.fixture
async def languages_engine() -> AsyncIterator[Engine]:
    """A char model that can spell "Python", "Java", "JavaScript" and "C", but has no "+" or "#"."""
    engine = start_engine(CharTokenizer.build("Python Java JavaScript C Go\nthe quick brown fox\n"), rows=200)
    yield engine
    engine.close()


@pytest.mark.parametrize("prompt", ["", "the "])
async def test_a_choice_never_enters_an_option_the_vocabulary_cannot_spell(
    languages_engine: Engine, prompt: str
) -> None:
    """Without "+" and "#", "C" would be a dead end: 200 seeded choices at temperature 1 are all spellable options."""
    out = await texts(languages_engine, Constraint.choice(LANGUAGES), prompt, n=200, max_tokens=20)
    assert len(out) == 200
    for text, result in out:
        assert text in ("Python", "Java", "JavaScript"), text
        assert result.finish_reason == "stop"
    assert {text for text, _ in out} == {"Python", "Java", "JavaScript"}  # each still drawn


async def test_a_regex_never_enters_an_alternative_the_vocabulary_cannot_spell(languages_engine: Engine) -> None:
    """On a vocabulary of characters the regex is intersected with what the alphabet spells."""
    pattern = r"(Python|Java|JavaScript|C\+\+|C#)( or (Python|Java|C\+\+|C#))?"
    out = await texts(languages_engine, Constraint("regex", pattern), n=200, max_tokens=40)
    for text, result in out:
        assert result.finish_reason == "stop"
        assert re.fullmatch(pattern, text) and "C" not in text, text


async def test_a_greedy_choice_spells_the_likeliest_option_it_can(languages_engine: Engine) -> None:
    """Greedy ranks only the spellable options (as /v1/score would: the option, then the line end)."""
    engine = languages_engine
    scored = {}
    for option in ("Python", "Java", "JavaScript"):
        ids = [*engine.tokenizer.encode(option).ids, engine.tokenizer.boundary_id]
        scored[option] = sum((await engine.feed(engine.fresh(), ids)).logprobs[:-1])
    greedy = SamplingParams(temperature=0)
    out = await texts(engine, Constraint.choice(LANGUAGES), n=3, sampling=greedy)
    assert [text for text, _ in out] == [max(scored, key=lambda option: scored[option])] * 3


async def test_a_choice_it_cannot_spell_at_all_is_refused_saying_why(languages_engine: Engine) -> None:
    with pytest.raises(ConstraintError, match=r'cannot spell any of its options \("C\+\+", "C#"\)'):
        await languages_engine.compile_constraint(Constraint.choice(["C++", "C#"]), languages_engine.fresh())


async def test_a_word_choice_drops_the_options_with_a_word_it_lacks(word_engine: Engine) -> None:
    """There is no word for "zebra": "the" would be a dead end, so it is never entered."""
    options = ["the zebra", "a dog", "on the mat"]
    out = await texts(word_engine, Constraint.choice(options), n=100)
    assert {text for text, _ in out} == {"a dog", "on the mat"}
    assert all(result.finish_reason == "stop" for _, result in out)


async def test_a_subword_choice_keeps_every_option_its_bytes_spell() -> None:
    """A byte-level vocabulary spells anything: "C++" stays an option and comes out whole."""
    engine = start_engine(subword_tokenizer(), rows=100)
    try:
        out = await texts(engine, Constraint.choice(LANGUAGES), n=100, max_tokens=20)
    finally:
        engine.close()
    assert {text for text, _ in out} <= set(LANGUAGES)
    assert all(result.finish_reason == "stop" for _, result in out)
    assert "C++" in {text for text, _ in out}


def test_a_choice_of_thousands_of_options_is_one_lexeme() -> None:
    """llguidance's parser holds at most 2,000 items a row: 5,000 options as rules failed at the first token."""
    vocabulary = ConstraintVocabulary(char_tokenizer())
    options = [f"{a}{b}{c}" for a in "abcdefghij" for b in "abcdefghij" for c in "abcdefghijklmnopqrstuvwxy"][:5000]
    matcher = vocabulary.compile(Constraint.choice(options), at_line_start=True).matcher
    tokenizer = char_tokenizer()
    assert matcher.consume_tokens(tokenizer.encode("bcd").ids), matcher.get_error()
    assert vocabulary.masks([matcher])[0][tokenizer.boundary_id]


async def test_a_deeply_nested_grammar_under_the_size_bound_compiles(char_engine: Engine) -> None:
    """2,900 nested rules (64,503 bytes, under the 65,536 bound) overflowed a default 8 MB thread stack in llguidance
    and killed the process; compiles run on threads with a deeper one."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    rules = ["start: r0", *(f'r{i}: "{letters[i % 26]}" r{i + 1} | "{letters[(i + 7) % 26]}"' for i in range(2900))]
    grammar = "\n".join([*rules, 'r2900: "a"'])
    assert 60_000 < len(grammar.encode()) < Settings().max_constraint_bytes
    compiled = await char_engine.compile_constraint(Constraint("grammar", grammar), char_engine.fresh())
    assert compiled.matcher.consume_tokens(char_engine.tokenizer.encode("abj").ids)  # "a" r1, "b" r2, then r2's "j"
    assert compiled.matcher.is_accepting()
