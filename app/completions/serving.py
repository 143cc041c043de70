"""OpenAI-compatible text completions: a plan per request, rendered whole or as OpenAI's stream.

Prompts come as text or token ids. A prompt whose first token is the boundary token
(the end of text that lm-evaluation-harness puts first) starts there: that token is the
start of the line every sequence begins with, so it is not fed a second time and its
log-probability is null, like OpenAI's first token; the rest then scores exactly as
/v1/score scores the text. Any other first token gets its log-probability given the
start of a line. `echo` with `logprobs` scores the prompt: each prompt token gets its
log-probability and its `logprobs` most likely alternatives, from the same log-softmax
row. Keys of `top_logprobs` are token strings as `tokens` has them.

`n` choices (or `best_of`, of which the n likeliest per token are returned) feed their
prompt once and fork its state; choice i draws from seed + i. Prompts of one request
that share a prefix have it fed once (`share_prefixes`). Finish reason `eos` (a word
model generated <eos>) is reported as OpenAI's `stop`. `suffix` fills the middle with
the model's backward partner (/v1/fill).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from app.api.conversion import generation_settings
from app.api.limits import check_count, check_logprobs, check_text
from app.api.render import Choice, Event, collect
from app.api.schemas import Usage
from app.completions.protocol import (
    CompletionChoice,
    CompletionFinishReason,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from app.completions.shared_prefixes import prefix_groups
from app.completions.suffix import check_suffix, fill_middle
from app.engine import FeedResult, Generation, GenerationResult, GenerationSettings, TokenEvent, Top
from app.errors import InvalidRequest
from app.models.registry import ModelRegistry, ServedModel
from app.settings import Settings
from model.tokenizer import Tokenizer


@dataclass(frozen=True)
class Prompt:
    """One prompt: its text as echoed, the ids fed from the start of a line, and whether it began at the boundary."""

    text: str
    ids: list[int]
    starts_at_boundary: bool
    offsets: list[int]  # where each token (the boundary included) starts in `text`


@dataclass(frozen=True)
class PreparedCompletion:
    request: CompletionRequest
    models: ModelRegistry
    served: ServedModel
    prompts: list[Prompt]
    plans: list[GenerationSettings]
    id: str
    created: int
    settings: Settings

    @property
    def top(self) -> int:
        """Alternatives wanted at every prompt position (echo scoring)."""
        return (self.request.logprobs or 0) if self.prompt_logprobs else 0

    @property
    def prompt_logprobs(self) -> bool:
        return self.request.echo and self.request.logprobs is not None

    @property
    def sampled(self) -> int:
        return self.request.best_of or self.request.n

    def usage(self, generated: int) -> Usage:
        return Usage.of(sum(len(p.ids) + p.starts_at_boundary for p in self.prompts), generated)


def prepare_completion(models: ModelRegistry, settings: Settings, request: CompletionRequest) -> PreparedCompletion:
    served = models.get(request.model)
    tokenizer = served.checkpoint.tokenizer
    prompts = [_prompt(settings, tokenizer, raw, index) for index, raw in enumerate(_raw_prompts(request.prompt))]
    check_count(len(prompts), settings.max_score_texts, "prompts", "max_score_texts")
    if request.best_of is not None and request.best_of < request.n:
        raise InvalidRequest(f"best_of={request.best_of} is less than n={request.n}", field="best_of")
    sampled = len(prompts) * (request.best_of or request.n)
    check_count(sampled, settings.max_active_sequences, "choices in all", "max_active_sequences")
    check_logprobs(settings, request.logprobs or 0)
    if request.stream:
        if len(prompts) > 1:
            raise InvalidRequest("stream needs a single prompt", field="stream")
        if request.best_of is not None and request.best_of > request.n:
            raise InvalidRequest("best_of > n cannot be streamed: the best are known only at the end", field="best_of")
        if request.echo and request.logprobs is not None:
            raise InvalidRequest("echo with logprobs (prompt scoring) is not streamed; send stream=false", field="echo")
    if request.suffix is not None:
        check_suffix(models, served, request, len(prompts), prompts[0].text)
    plans = [generation_settings(settings, served, request, p.ids, request.min_tokens) for p in prompts]
    return PreparedCompletion(
        request, models, served, prompts, plans, f"cmpl-{uuid.uuid4().hex}", int(time.time()), settings
    )


def _raw_prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidRequest("prompt must be a text, token ids, or a non-empty list of either", field="prompt")
    if all(isinstance(item, int) for item in prompt):
        return [[item for item in prompt if isinstance(item, int)]]  # one prompt of token ids
    return [item for item in prompt if not isinstance(item, int)]


def _prompt(settings: Settings, tokenizer: Tokenizer, raw: str | list[int], index: int) -> Prompt:
    if isinstance(raw, str):
        check_text(settings, raw, f"prompt[{index}]")
        encoding = tokenizer.encode(raw)
        ids, text = encoding.ids, raw
        offsets = tokenizer.source_offsets(raw, encoding)
    else:
        bad = [token for token in raw if not 0 <= token < tokenizer.vocab_size]
        if bad:
            raise InvalidRequest(
                f"prompt[{index}] has token id {bad[0]}, not in this model's vocabulary (0..{tokenizer.vocab_size - 1})",
                field="prompt",
            )
        check_count(len(raw), settings.max_text_chars, f"tokens in prompt[{index}]", "max_text_chars")
        ids = list(raw)
        text, offsets = tokenizer.decode(ids), tokenizer.text_offsets(ids)
    if ids and ids[0] == tokenizer.boundary_id:
        return Prompt(text, ids[1:], True, offsets)
    return Prompt(text, ids, False, offsets)


# ---- whole answers ----------------------------------------------------------------------


@dataclass(frozen=True)
class PromptOutcome:
    """One prompt's choices and the log-probabilities (and alternatives) of its fed tokens."""

    choices: list[Choice]
    fed_logprobs: list[float]
    fed_top: list[Top]


async def complete(models: ModelRegistry, settings: Settings, request: CompletionRequest) -> CompletionResponse:
    """The whole answer: the request checked, admitted (EngineBusy when full) and generated."""
    prepared = prepare_completion(models, settings, request)
    if prepared.request.suffix is not None:
        text = prepared.prompts[0].text
        filled, generated = await fill_middle(prepared.models, prepared.settings, prepared.served, request, text)
        return _response(prepared, filled, prepared.usage(generated))
    engine = prepared.served.engine
    ids = [prompt.ids for prompt in prepared.prompts]
    groups = prefix_groups(ids) if prepared.settings.share_prefixes else [([], [i]) for i in range(len(ids))]
    # Shared prefixes first (queued feeds), then every generation admitted at once: all or none.
    heads = await asyncio.gather(
        *(engine.feed(engine.fresh(), prefix, prepared.prompt_logprobs, prepared.top) for prefix, _ in groups if prefix)
    )
    starts: dict[int, tuple[int, FeedResult]] = {}
    shared = iter(heads)
    for prefix, members in groups:
        head = next(shared) if prefix else FeedResult([], engine.fresh())
        starts.update((index, (len(prefix), head)) for index in members)
    generations: list[Generation] = []
    try:
        for index, prompt in enumerate(prepared.prompts):
            length, head = starts[index]
            generations.append(
                await engine.generate(
                    head.end,
                    prepared.plans[index],
                    prompt.ids[length:],
                    prepared.prompt_logprobs,
                    prepared.sampled,
                    prepared.top,
                )
            )
        found = await asyncio.gather(*(collect(generation) for generation in generations))
    finally:
        for generation in generations:  # a refusal, or a client gone: nothing keeps running
            generation.cancel()
    choices: list[CompletionChoice] = []
    generated = 0
    for index, (prompt, prompt_choices) in enumerate(zip(prepared.prompts, found, strict=True)):
        head = starts[index][1]
        result = prompt_choices[0].result
        outcome = PromptOutcome(prompt_choices, head.logprobs + result.fed_logprobs, [*head.top, *result.fed_top])
        generated += sum(len(choice.result.token_ids) for choice in prompt_choices)
        for rank, choice in enumerate(_best(prompt_choices, prepared.request.n)):
            choices.append(_choice(prepared, index * prepared.request.n + rank, prompt, outcome, choice))
    return _response(prepared, choices, prepared.usage(generated))


def _best(choices: list[Choice], n: int) -> list[Choice]:
    """The n choices to return: all of them, or (best_of) the n likeliest per token."""
    if len(choices) == n:
        return choices
    return sorted(choices, key=lambda c: _mean_logprob(c.events), reverse=True)[:n]


def _mean_logprob(events: list[TokenEvent]) -> float:
    return math.fsum(event.logprob for event in events) / len(events) if events else 0.0


def _choice(
    prepared: PreparedCompletion, index: int, prompt: Prompt, outcome: PromptOutcome, choice: Choice
) -> CompletionChoice:
    request, tokenizer = prepared.request, prepared.served.checkpoint.tokenizer
    text = prompt.text + choice.text if request.echo else choice.text
    logprobs = None
    if request.logprobs is not None:
        start = len(prompt.text) if request.echo else 0
        logprobs = _generated_logprobs(tokenizer, choice.events, _last(tokenizer, prompt), start)
        if request.echo:
            logprobs = _join(_prompt_logprobs(tokenizer, prompt, outcome), logprobs)
    return CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=_finish(choice.result))


def _last(tokenizer: Tokenizer, prompt: Prompt) -> int:
    """The token before the first generated one."""
    return prompt.ids[-1] if prompt.ids else tokenizer.boundary_id


def _response(prepared: PreparedCompletion, choices: list[CompletionChoice], usage: Usage | None) -> CompletionResponse:
    return CompletionResponse(
        id=prepared.id, created=prepared.created, model=prepared.served.id, choices=choices, usage=usage
    )


def _finish(result: GenerationResult) -> CompletionFinishReason:
    return "length" if result.finish_reason == "length" else "stop"


def _keyed(tokenizer: Tokenizer, top: Top, previous: int | None) -> dict[str, float]:
    """Alternatives keyed as `tokens` spells them (a word's leading space included)."""
    return {tokenizer.piece(token, previous): logprob for token, logprob in top}


def _prompt_logprobs(tokenizer: Tokenizer, prompt: Prompt, outcome: PromptOutcome) -> CompletionLogprobs:
    """The prompt's tokens: the boundary it started at (no number, as OpenAI's first token), then each fed one."""
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    previous: int | None = None
    if prompt.starts_at_boundary:
        tokens.append(tokenizer.piece(tokenizer.boundary_id, None))
        values.append(None)
        tops.append(None)
        previous = tokenizer.boundary_id
    for position, token in enumerate(prompt.ids):
        tokens.append(tokenizer.piece(token, previous))
        values.append(outcome.fed_logprobs[position])
        top = outcome.fed_top[position] if position < len(outcome.fed_top) else None
        tops.append(_keyed(tokenizer, top, previous) if top is not None else None)
        previous = token
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=prompt.offsets[: len(tokens)]
    )


def _generated_logprobs(
    tokenizer: Tokenizer, events: list[TokenEvent], previous: int, start: int
) -> CompletionLogprobs:
    """Generated tokens; offsets follow their pieces (a stop string may cut the text before the last ones)."""
    offsets, tops, position = [], [], start
    for event in events:
        offsets.append(position)
        position += len(event.piece)
        tops.append(_keyed(tokenizer, event.top, previous))
        previous = event.token_id
    return CompletionLogprobs(
        tokens=[event.piece for event in events],
        token_logprobs=[event.logprob for event in events],
        top_logprobs=list(tops),
        text_offset=offsets,
    )


def _join(first: CompletionLogprobs, second: CompletionLogprobs) -> CompletionLogprobs:
    return CompletionLogprobs(
        tokens=first.tokens + second.tokens,
        token_logprobs=first.token_logprobs + second.token_logprobs,
        top_logprobs=first.top_logprobs + second.top_logprobs,
        text_offset=first.text_offset + second.text_offset,
    )


# ---- the stream -------------------------------------------------------------------------


async def start_stream(
    models: ModelRegistry, settings: Settings, request: CompletionRequest
) -> tuple[Generation, CompletionStream]:
    """Check the request and admit the one prompt's n choices (EngineBusy when full), before the stream opens."""
    prepared = prepare_completion(models, settings, request)
    engine, prompt = prepared.served.engine, prepared.prompts[0]
    generation = await engine.generate(engine.fresh(), prepared.plans[0], prompt.ids, n=prepared.request.n)
    return generation, CompletionStream(prepared)


class CompletionStream:
    """OpenAI's stream: `data: {chunk}` per token of each choice, a last chunk per choice, `data: [DONE]`.

    With `stream_options.include_usage` a chunk with no choices and the usage comes before [DONE].
    """

    def __init__(self, prepared: PreparedCompletion) -> None:
        self.prepared = prepared
        self.tokenizer = prepared.served.checkpoint.tokenizer
        prompt = prepared.prompts[0]
        echo = prepared.request.echo
        self.position = [len(prompt.text) if echo else 0] * prepared.request.n
        self.previous = [_last(self.tokenizer, prompt)] * prepared.request.n
        self.echo_pending = [echo] * prepared.request.n

    def token(self, event: TokenEvent) -> Event:
        choice = event.choice
        logprobs = None
        if self.prepared.request.logprobs is not None:
            logprobs = _generated_logprobs(self.tokenizer, [event], self.previous[choice], self.position[choice])
        self.position[choice] += len(event.piece)
        self.previous[choice] = event.token_id
        return self._chunk(choice, self._echoed(choice) + event.text, logprobs, None)

    def _echoed(self, choice: int) -> str:
        """The prompt, in front of a choice's first text (echo)."""
        if not self.echo_pending[choice]:
            return ""
        self.echo_pending[choice] = False
        return self.prepared.prompts[0].text

    async def finish(self, choices: list[Choice]) -> list[Event]:
        closing = [
            self._chunk(c.result.choice, self._echoed(c.result.choice), None, _finish(c.result)) for c in choices
        ]
        options = self.prepared.request.stream_options
        if options is not None and options.include_usage:
            usage = self.prepared.usage(sum(len(c.result.token_ids) for c in choices))
            closing.append({"data": _response(self.prepared, [], usage).model_dump_json()})
        return [*closing, {"data": "[DONE]"}]

    def error(self, body: dict[str, Any]) -> Event:
        return {"data": json.dumps(body)}

    def _chunk(
        self, index: int, text: str, logprobs: CompletionLogprobs | None, finish: CompletionFinishReason | None
    ) -> Event:
        choice = CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish)
        return {"data": _response(self.prepared, [choice], None).model_dump_json()}
