"""Constraints over HTTP: the fields on every generating route, what they yield, and every 422.

The app runs with its real lifespan; the openai SDK talks to it through httpx's ASGI
transport (the same requests it sends over a socket), with `extra_body` for the fields
OpenAI's completions call does not name.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import openai
import pytest

from app.api.constraints import CONSTRAINT_FIELDS
from app.completions.suffix import SUFFIX_CONFLICTS
from app.engine import Constraint, Engine
from app.engine.constraint import ConstraintVocabulary
from app.main import create_app
from app.settings import Settings
from model.checkpoint import save_checkpoint
from model.tokenizer import CharTokenizer
from tests.factories import tiny_model
from tests.helpers import JSON_TEXT, PERSON, ClientFactory, openai_sdk, parse_sse, running, served_over_http, wait_until

CHAR_REGEX = "[a-z]{1,5}( [a-z]{1,5}){0,2}"
WORD_REGEX = "( [a-z]+){1,4}"  # mid-line (after a prompt) a word model's text starts with a space


@pytest.fixture(scope="module")
def json_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A char model whose vocabulary can spell JSON."""
    root = tmp_path_factory.mktemp("json-models")
    tokenizer = CharTokenizer.build(JSON_TEXT)
    save_checkpoint(root / "json", tiny_model(tokenizer), tokenizer, training={"corpus": "tiny", "steps": 0})
    return root


@pytest.fixture
async def json_client(json_models_dir: Path, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(models_dir=json_models_dir, redis_url=redis_url, torch_threads=1)
    async with running(create_app(settings)) as client:
        yield client


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = await client.post(path, json=body)
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize(
    ("model", "prompt", "pattern"), [("char", "the ", CHAR_REGEX), ("word", "the cat", WORD_REGEX)]
)
async def test_200_seeded_completions_under_a_regex_all_full_match_it(
    client: httpx.AsyncClient, model: str, prompt: str, pattern: str
) -> None:
    texts = []
    for seed in range(0, 200, 50):  # choice i draws from seed + i: 200 distinct seeds
        body = {"model": model, "prompt": prompt, "n": 50, "seed": seed, "max_tokens": 40}
        answer = await post(client, "/v1/completions", {**body, "structured_outputs": {"regex": pattern}})
        assert {choice["finish_reason"] for choice in answer["choices"]} == {"stop"}
        texts += [choice["text"] for choice in answer["choices"]]
    assert len(texts) == 200
    assert all(re.fullmatch(pattern, text) for text in texts), [t for t in texts if not re.fullmatch(pattern, t)]


@pytest.mark.parametrize(
    ("model", "prompt", "options"),
    [
        ("char", "the ", ["c", "d", "f", "q"]),
        ("char", "the ", ["hello world", "lazy dog", "quick brown fox", "he"]),  # whole options, not first tokens
        ("word", "the cat", [" sat", " on", " and"]),
        ("word", "the cat", [" sat on the mat", " and a dog", " on the log", " sat"]),
        ("word", "", ["the cat sat", "a dog", "the dog"]),  # at a line start
    ],
)
async def test_choice_returns_a_choice_and_greedy_returns_the_one_score_ranks_first(
    client: httpx.AsyncClient, model: str, prompt: str, options: list[str]
) -> None:
    for seed in range(5):
        body = {"model": model, "prompt": prompt, "seed": seed, "structured_outputs": {"choice": options}}
        answer = await post(client, "/v1/generate", body)
        assert answer["text"] in options and answer["finish_reason"] == "stop"
    greedy = await post(client, "/v1/generate", {**body, "temperature": 0})
    scored = await post(client, "/v1/score", {"model": model, "texts": [prompt + option for option in options]})
    ranked = max(zip(options, scored["results"], strict=True), key=lambda pair: pair[1]["logprob"])[0]
    assert greedy["text"] == ranked


async def test_a_json_schema_yields_valid_json_whenever_it_stops(json_client: httpx.AsyncClient) -> None:
    answer = await post(
        json_client,
        "/v1/completions",
        {
            "prompt": "",
            "n": 40,
            "seed": 1,
            "max_tokens": 60,
            "temperature": 0.7,
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        },
    )
    stopped = [choice["text"] for choice in answer["choices"] if choice["finish_reason"] == "stop"]
    assert stopped
    for text in stopped:
        jsonschema_rs.validate(PERSON, json.loads(text))
    cut = [choice["text"] for choice in answer["choices"] if choice["finish_reason"] == "length"]
    assert all(text.lstrip().startswith("{") for text in cut)  # a valid prefix: nothing before the object


async def test_json_object_and_the_aliases_constrain_too(json_client: httpx.AsyncClient) -> None:
    base = {"prompt": "", "seed": 3, "max_tokens": 60, "temperature": 0.5}
    for fields in (
        {"response_format": {"type": "json_object"}},
        {"guided_json": PERSON},
        {"guided_json": json.dumps(PERSON)},
        {"structured_outputs": {"json": PERSON}},
    ):
        answer = await post(json_client, "/v1/generate", {**base, **fields})
        if answer["finish_reason"] == "stop":
            assert isinstance(json.loads(answer["text"]), dict)
        else:
            assert answer["text"].lstrip().startswith("{")


async def test_streamed_equals_whole_on_every_route(client: httpx.AsyncClient) -> None:
    body = {"prompt": "the ", "seed": 11, "max_tokens": 30, "structured_outputs": {"regex": CHAR_REGEX}}
    whole = await post(client, "/v1/generate", body)
    streamed = await client.post("/v1/generate", json={**body, "stream": True})
    events = parse_sse(streamed.text)
    assert "".join(data["text"] for event, data in events if event == "token") == whole["text"]
    assert events[-1][0] == "done" and events[-1][1]["finish_reason"] == whole["finish_reason"] == "stop"
    completion = await post(client, "/v1/completions", body)
    assert completion["choices"][0]["text"] == whole["text"]
    chunks = parse_sse((await client.post("/v1/completions", json={**body, "stream": True})).text)
    assert "".join(data["choices"][0]["text"] for _, data in chunks if data != "[DONE]") == whole["text"]


async def test_a_seeded_constrained_request_is_the_same_alone_and_amid_30_others(client: httpx.AsyncClient) -> None:
    constrained = {"prompt": "over the ", "seed": 5, "max_tokens": 30, "guided_regex": "[a-z ]{5,30}"}
    alone = await post(client, "/v1/generate", constrained)
    free = [{"prompt": "over the ", "max_tokens": 30, "seed": i} for i in range(30)]
    answers = await asyncio.gather(
        *(post(client, "/v1/generate", body) for body in [*free[:15], constrained, *free[15:]])
    )
    assert answers[15]["text"] == alone["text"]


async def test_best_of_and_beam_search_honour_the_constraint(client: httpx.AsyncClient) -> None:
    options = ["hello world", "the quick fox", "lazy dog"]
    body = {"prompt": "", "n": 2, "best_of": 4, "seed": 2, "max_tokens": 20, "guided_choice": options}
    answer = await post(client, "/v1/completions", body)
    assert [choice["text"] in options for choice in answer["choices"]] == [True, True]
    beam = await post(
        client,
        "/v1/generate",
        {"prompt": "", "beam_width": 3, "max_tokens": 20, "structured_outputs": {"choice": options}},
    )
    assert beam["text"] in options and beam["finish_reason"] == "stop"


async def test_a_session_generates_under_a_constraint(client: httpx.AsyncClient) -> None:
    session = await post(client, "/v1/sessions", {"model": "word", "prompt": "the cat", "flush": True}, 201)
    path = f"/v1/sessions/{session['id']}/generate"
    answer = await post(client, path, {"seed": 1, "max_tokens": 10, "guided_regex": WORD_REGEX})
    assert re.fullmatch(WORD_REGEX, answer["text"]) and answer["finish_reason"] == "stop"


async def test_the_openai_sdk_sends_constraints_through_extra_body(client: httpx.AsyncClient) -> None:
    async with openai_sdk(client) as api:
        completion = await api.completions.create(
            model="char", prompt="the ", max_tokens=30, seed=4, extra_body={"structured_outputs": {"regex": CHAR_REGEX}}
        )
        assert re.fullmatch(CHAR_REGEX, completion.choices[0].text)
        assert completion.choices[0].finish_reason == "stop"
        stream = await api.completions.create(
            model="char", prompt="the ", max_tokens=30, seed=4, stream=True, extra_body={"guided_regex": CHAR_REGEX}
        )
        assert "".join([chunk.choices[0].text async for chunk in stream if chunk.choices]) == completion.choices[0].text
        with pytest.raises(openai.BadRequestError, match="unclosed group"):
            await api.completions.create(model="char", prompt="a", extra_body={"guided_regex": "(ab"})


async def test_the_openai_sdk_sends_response_format(json_client: httpx.AsyncClient) -> None:
    async with openai_sdk(json_client) as api:
        completion = await api.completions.create(
            model="json",
            prompt="",
            max_tokens=60,
            seed=2,
            temperature=0.5,
            extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}},
        )
    choice = completion.choices[0]
    if choice.finish_reason == "stop":
        jsonschema_rs.validate(PERSON, json.loads(choice.text))


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"structured_outputs": {"regex": "(ab"}}, "structured_outputs.regex", "unclosed group"),
        ({"guided_json": {"type": "objectx"}}, "guided_json", "objectx"),
        ({"structured_outputs": {"json": "{not json"}}, "structured_outputs.json", "not JSON"),
        ({"guided_grammar": "start: missing_rule"}, "guided_grammar", "missing_rule"),
        ({"model": "word", "guided_regex": " [0-9]+"}, "guided_regex", "no token of this model's vocabulary can start"),
        ({"model": "word", "prompt": "", "guided_choice": ["zebra"]}, "guided_choice", "no token"),
        ({"guided_choice": ["c++", "c#"]}, "guided_choice", 'cannot spell any of its options ("c++", "c#")'),
    ],
)
async def test_an_unusable_constraint_is_refused_naming_it(
    client: httpx.AsyncClient, body: dict[str, Any], field: str, message: str
) -> None:
    """422 on the native route; OpenAI's 400 invalid_request_error (with `param`) on completions."""
    for path, status, kind in (
        ("/v1/generate", 422, "invalid_request"),
        ("/v1/completions", 400, "invalid_request_error"),
    ):
        for stream in (False, True):
            response = await client.post(path, json={"prompt": "the cat", "stream": stream, **body})
            assert response.status_code == status, response.text  # before any stream opens
            error = response.json()["error"]
            assert error["type"] == kind and error["field"] == field
            assert message in error["message"]


async def test_malformed_or_several_constraints_are_422s(client: httpx.AsyncClient) -> None:
    malformed: list[dict[str, Any]] = [
        {"structured_outputs": {"regex": "a", "choice": ["a"]}},
        {"structured_outputs": {}},
        {"response_format": {"type": "json_schema"}},
        {"structured_outputs": {"choice": []}},
    ]
    for body in malformed:
        response = await client.post("/v1/generate", json={"prompt": "a", **body})
        assert response.status_code == 422, body
    response = await client.post("/v1/generate", json={"prompt": "a", "guided_regex": "a", "guided_choice": ["a"]})
    assert response.status_code == 422
    assert response.json()["error"]["conflicts"] == ["guided_choice", "guided_regex"]
    for body in [*malformed, {"guided_json": 42}, {"guided_regex": "a", "guided_choice": ["a"]}]:
        response = await client.post("/v1/completions", json={"prompt": "a", **body})
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error", body


async def test_a_constraint_over_the_size_bound_is_refused(make_client: ClientFactory) -> None:
    async with make_client(max_constraint_bytes=100) as client:
        response = await client.post("/v1/generate", json={"prompt": "a", "guided_regex": "a" * 101})
    assert response.status_code == 422
    assert "over the bound of 100" in response.json()["error"]["message"]


async def test_every_surface_hands_the_engine_the_same_constraint(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One conversion: a field (or its alias) becomes the same engine Constraint on each surface."""
    seen: list[Constraint | None] = []
    original = Engine.generate

    def recording(self: Engine, start: Any, settings: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(settings.constraint)
        return original(self, start, settings, *args, **kwargs)

    monkeypatch.setattr(Engine, "generate", recording)
    created = await post(client, "/v1/sessions", {"model": "word", "prompt": "the cat", "flush": True}, 201)
    for path, extra in [
        ("/v1/generate", {"prompt": "the cat"}),
        (f"/v1/sessions/{created['id']}/generate", {}),
        ("/v1/completions", {"prompt": "the cat"}),
    ]:
        for fields in ({"structured_outputs": {"regex": WORD_REGEX}}, {"guided_regex": WORD_REGEX}):
            await post(client, path, {"model": "word", "max_tokens": 3, **fields, **extra})
    assert [(c.kind, c.text) if c else None for c in seen] == [("regex", WORD_REGEX)] * 6
    assert [c.field if c else None for c in seen] == ["structured_outputs.regex", "guided_regex"] * 3


def test_a_suffix_fill_refuses_every_constraint_field() -> None:
    assert set(CONSTRAINT_FIELDS) <= set(SUFFIX_CONFLICTS)


async def test_a_constraint_slower_to_compile_than_the_bound_is_refused(make_client: ClientFactory) -> None:
    """The bound is a setting; a microsecond makes any constraint too slow (a real one takes about a millisecond)."""
    async with make_client(constraint_compile_seconds=1e-6) as client:
        response = await client.post("/v1/generate", json={"prompt": "a", "guided_regex": "(a|b)*a(a|b){30}"})
    assert response.status_code == 422
    assert "took over 1e-06 s to compile" in response.json()["error"]["message"]


async def test_a_constraint_compiles_off_the_event_loop(
    models_dir: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a grammar of 30,000 literals in a row compiles (about a second here), /health and a running stream
    keep answering.

    Compiled on the event loop, both would wait out the whole compile. The bounds are a
    fraction of the compile's own time (from sending the request to its stream opening,
    which comes once it is compiled and admitted), so a slower or busier machine moves
    both sides alike. The gaps are measured while it compiles: from the request to the
    moment the compile returns (timed around `ConstraintVocabulary.compile`, which runs
    unchanged); what the worker does after, starting the row, is not the compile. (The grammar's text is one string: parsing the request costs the
    loop next to nothing.)
    """
    rng = random.Random(0)
    literals = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(2)) for _ in range(30_000)]
    grammar = "start: " + " ".join(f'"{literal}"' for literal in literals)
    settings = Settings(
        models_dir=models_dir,
        redis_url=redis_url,
        torch_threads=1,
        max_tokens_limit=100_000,
        max_constraint_bytes=2**20,
        constraint_compile_seconds=120,
    )
    compiled: list[float] = []  # when the compile returned
    compile = ConstraintVocabulary.compile

    def timed(self: ConstraintVocabulary, *args: Any, **kwargs: Any) -> Any:
        try:
            return compile(self, *args, **kwargs)
        finally:
            compiled.append(time.monotonic())

    monkeypatch.setattr(ConstraintVocabulary, "compile", timed)
    tokens: list[float] = []  # when each token event of the running stream arrived
    health: list[tuple[float, float]] = []  # each /health: when it was sent, how long it took

    async def read(response: httpx.Response) -> None:
        async for line in response.aiter_lines():
            if line.startswith("event: token"):
                tokens.append(time.monotonic())

    async def poll(client: httpx.AsyncClient) -> None:
        while True:
            sent = time.monotonic()
            assert (await client.get("/health")).status_code == 200
            health.append((sent, time.monotonic() - sent))
            await asyncio.sleep(0.005)

    async with served_over_http(create_app(settings)) as url, httpx.AsyncClient(base_url=url, timeout=120) as client:
        free = {"max_tokens": 100_000, "stream": True, "seed": 1}
        async with client.stream("POST", "/v1/generate", json=free) as running:
            reader = asyncio.create_task(read(running))
            await wait_until(lambda: len(tokens) >= 5, "the running stream's first tokens")
            poller = asyncio.create_task(poll(client))
            await wait_until(lambda: len(health) >= 2, "the first /health answers")
            constrained = {"max_tokens": 20, "stream": True, "seed": 2, "structured_outputs": {"grammar": grammar}}
            began = time.monotonic()
            async with client.stream("POST", "/v1/generate", json=constrained) as response:
                opened = time.monotonic()
                assert response.status_code == 200
                body = (await response.aread()).decode()
            poller.cancel()
            reader.cancel()
    events = parse_sse(body)
    assert events[-1][0] == "done" and events[-1][1]["finish_reason"] == "length"
    assert "".join(literals).startswith("".join(data["text"] for event, data in events if event == "token"))
    assert len(compiled) == 1, "compiled once"
    done = compiled[0]
    assert began < done <= opened
    window = done - began
    arrivals = [began, *(t for t in tokens if began < t < done), done]
    stream_gap = max(later - earlier for earlier, later in itertools.pairwise(arrivals))
    health_waits = [took for sent, took in health if began <= sent and sent + took <= done]
    assert len(health_waits) >= 3, f"/health answered {len(health_waits)} times in the {window:.3f} s compile"
    assert stream_gap < window / 4, f"the stream paused {stream_gap:.3f} s during a {window:.3f} s compile"
    assert max(health_waits) < window / 4, f"/health took {max(health_waits):.3f} s during a {window:.3f} s compile"
