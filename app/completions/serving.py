"""OpenAI-compatible text completions: a checked plan per request, and the whole answer.

Prompts come as text or token ids. A prompt whose first token is the boundary token
(the end of text that lm-evaluation-harness puts first) starts there: that token is the
start of the line every sequence begins with, so it is not fed a second time. Any
other first token is fed given the start of a line; either way, as OpenAI and vLLM
answer, the first prompt token's logprob is null (app/completions/logprobs.py), and
the rest score exactly as /v1/score scores the text.

`n` choices (or `best_of`, of which the n likeliest per token are returned) feed their
prompt once and fork its state; choice i draws from seed + i. Prompts of one request
that share a prefix have it fed once (`share_prefixes`). Finish reason `eos` (a word
model generated <eos>) is reported as OpenAI's `stop`. `suffix` fills the middle with
the model's backward partner (/v1/fill). `use_beam_search` is app/completions/beam.py, the stream
app/completions/stream.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
import uuid
from dataclasses import dataclass

from app.api.conversion import generation_settings
from app.api.limits import check_count, check_logprobs, check_text
from app.api.render import Choice, collect
from app.completions import logprobs as rendered
from app.completions.protocol import (
    REFUSED,
    CompletionChoice,
    CompletionFinishReason,
    CompletionRequest,
    CompletionResponse,
    CompletionUsage,
)
from app.completions.shared_prefixes import prefix_groups
from app.completions.suffix import check_suffix, fill_middle
from app.engine import FeedResult, FinishReason, Generation, GenerationSettings, TokenEvent
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

    def given(self, boundary_id: int) -> list[int]:
        """Its token ids as sent (after truncation): the boundary it started at included."""
        return [boundary_id, *self.ids] if self.starts_at_boundary else self.ids


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
    def tokenizer(self) -> Tokenizer:
        return self.served.checkpoint.tokenizer

    @property
    def spelling(self) -> rendered.Spelling:
        return rendered.Spelling(self.tokenizer, self.request.return_tokens_as_token_ids)

    @property
    def echo_logprobs(self) -> bool:
        return self.request.echo and self.request.logprobs is not None

    @property
    def prompt_logprobs(self) -> bool:
        """Whether the prompt is scored (echo with logprobs, or vLLM's prompt_logprobs)."""
        return self.echo_logprobs or self.request.prompt_logprobs is not None

    @property
    def top(self) -> int:
        """Alternatives wanted at every prompt position."""
        echo = (self.request.logprobs or 0) if self.echo_logprobs else 0
        return max(echo, self.request.prompt_logprobs or 0)

    @property
    def sampled(self) -> int:
        return self.request.best_of or self.request.n

    @property
    def fingerprint(self) -> str:
        return f"rnnlm-{self.served.sha256[:16]}"

    def prompt_tokens(self) -> int:
        return sum(len(p.ids) + p.starts_at_boundary for p in self.prompts)

    def usage(self, generated: int, cached: int = 0) -> CompletionUsage:
        return CompletionUsage.counted(self.prompt_tokens(), generated, cached)

    def response(self, choices: list[CompletionChoice], usage: CompletionUsage | None) -> CompletionResponse:
        return CompletionResponse(
            id=self.id,
            created=self.created,
            model=self.served.id,
            system_fingerprint=self.fingerprint,
            choices=choices,
            usage=usage,
        )


def prepare_completion(models: ModelRegistry, settings: Settings, request: CompletionRequest) -> PreparedCompletion:
    check_fields(request)
    served = models.get(request.model)
    tokenizer = served.checkpoint.tokenizer
    raw_prompts = _raw_prompts(request.prompt)
    prompts = [_prompt(settings, tokenizer, raw, index, request) for index, raw in enumerate(raw_prompts)]
    check_count(len(prompts), settings.max_score_texts, "prompts", "max_score_texts")
    if request.best_of is not None and request.best_of < request.n:
        raise InvalidRequest(f"best_of={request.best_of} is less than n={request.n}", field="best_of")
    sampled = len(prompts) * (request.best_of or request.n)
    check_count(sampled, settings.max_active_sequences, "choices in all", "max_active_sequences")
    check_logprobs(settings, request.logprobs or 0)
    if (request.prompt_logprobs or 0) > settings.max_logprobs:
        raise InvalidRequest(
            f"prompt_logprobs={request.prompt_logprobs} is more than max_logprobs={settings.max_logprobs}",
            field="prompt_logprobs",
            limit="max_logprobs",
        )
    if request.stream:
        if request.best_of is not None and request.best_of > request.n:
            raise InvalidRequest("best_of > n cannot be streamed: the best are known only at the end", field="best_of")
        if request.echo and request.logprobs is not None:
            raise InvalidRequest("echo with logprobs (prompt scoring) is not streamed; send stream=false", field="echo")
        if request.prompt_logprobs is not None:
            raise InvalidRequest("prompt_logprobs are not streamed; send stream=false", field="prompt_logprobs")
    if request.suffix is not None:
        check_suffix(models, served, request, len(prompts), prompts[0].text)
    plans = [_plan(settings, served, request, prompt) for prompt in prompts]
    request_id = f"cmpl-{request.request_id}" if request.request_id else f"cmpl-{uuid.uuid4().hex}"
    return PreparedCompletion(request, models, served, prompts, plans, request_id, int(time.time()), settings)


def check_fields(request: CompletionRequest) -> None:
    """The fields this server cannot honour, each refused naming itself (400 on this route)."""
    for name, (accepted, why) in REFUSED.items():
        if not accepted(getattr(request, name)):
            raise InvalidRequest(f"{name} is not supported: {why}", field=name)
    options = request.stream_options
    if options is not None and not request.stream:
        raise InvalidRequest("stream_options is only allowed when stream is true", field="stream_options")
    if options is not None and options.include_obfuscation:
        raise InvalidRequest(
            "stream_options.include_obfuscation is not supported: chunks are not padded",
            field="stream_options.include_obfuscation",
        )
    if request.length_penalty != 1.0 and not request.use_beam_search:
        raise InvalidRequest("length_penalty applies only with use_beam_search", field="length_penalty")


def _plan(settings: Settings, served: ServedModel, request: CompletionRequest, prompt: Prompt) -> GenerationSettings:
    """The shared sampling fields' settings, with vLLM's token-level fields on top."""
    tokenizer = served.checkpoint.tokenizer
    plan = generation_settings(settings, served, request, prompt.ids, request.min_tokens)
    stop_ids = tuple(_vocabulary_ids(tokenizer, request.stop_token_ids, "stop_token_ids"))
    if request.ignore_eos:
        plan = dataclasses.replace(plan, eos_id=None)
    allowed = None
    bad_words = _bad_words(tokenizer, request.bad_words, request.allow_unk)
    if request.allowed_token_ids is not None:
        allowed = tuple(sorted(set(_vocabulary_ids(tokenizer, request.allowed_token_ids, "allowed_token_ids"))))
        _check_allowed(tokenizer, request, plan, allowed, bad_words, stop_ids)
    return dataclasses.replace(
        plan,
        stop_ids=stop_ids,
        include_stop=request.include_stop_str_in_output,
        allowed_ids=allowed,
        bad_words=bad_words,
    )


def _vocabulary_ids(tokenizer: Tokenizer, ids: list[int], field: str, where: str | None = None) -> list[int]:
    bad = [token for token in ids if not 0 <= token < tokenizer.vocab_size]
    if bad:
        raise InvalidRequest(
            f"{where or field} has token id {bad[0]}, not in this model's vocabulary (0..{tokenizer.vocab_size - 1})",
            field=field,
        )
    return ids


def _bad_words(tokenizer: Tokenizer, words: list[str], allow_unk: bool) -> tuple[tuple[int, ...], ...]:
    """Each word's token sequences, at a line start and mid-line (as vLLM: the word and the word after a space).

    A word that holds a token the model never generates (`<unk>`) can never be produced: it needs no ban.
    """
    found: dict[tuple[int, ...], None] = {}
    for word in words:
        if not word.strip():
            raise InvalidRequest(
                f"bad_words holds {word!r}: a word must not be empty or only whitespace", field="bad_words"
            )
        for variant in (word, " " + word):
            ids = tuple(tokenizer.encode(variant).ids)
            if ids and (allow_unk or tokenizer.unk_id not in ids):
                found[ids] = None
    return tuple(found)


def _check_allowed(
    tokenizer: Tokenizer,
    request: CompletionRequest,
    plan: GenerationSettings,
    allowed: tuple[int, ...],
    bad_words: tuple[tuple[int, ...], ...],
    stop_ids: tuple[int, ...],
) -> None:
    """allowed_token_ids must leave a token to draw at every step, whatever else is banned."""
    if plan.constraint is not None:
        raise InvalidRequest(
            f"allowed_token_ids cannot be combined with a constraint ({plan.constraint.field}): give one of them",
            field="allowed_token_ids",
        )
    partial = sorted(set(allowed) & tokenizer.partial_ids)
    if partial:
        raise InvalidRequest(
            f"allowed_token_ids has token {partial[0]}, only part of a character: the text could not go on",
            field="allowed_token_ids",
        )
    banned = {words[0] for words in bad_words if len(words) == 1}
    if not request.allow_unk and tokenizer.unk_id is not None:
        banned.add(tokenizer.unk_id)
    if request.min_tokens:
        banned |= {*stop_ids, *([] if plan.eos_id is None else [plan.eos_id])}
    left = set(allowed) - banned
    # Each multi-token bad word bans at most one more token at a step.
    if len(left) <= sum(1 for words in bad_words if len(words) > 1 and words[-1] in left):
        raise InvalidRequest(
            "allowed_token_ids leaves no token to draw once <unk>, the bad words (and before min_tokens the end "
            "of text) are banned",
            field="allowed_token_ids",
        )


def _raw_prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidRequest("prompt must be a text, token ids, or a non-empty list of either", field="prompt")
    if all(isinstance(item, int) for item in prompt):
        return [[item for item in prompt if isinstance(item, int)]]  # one prompt of token ids
    return [item for item in prompt if not isinstance(item, int)]


def _prompt(
    settings: Settings, tokenizer: Tokenizer, raw: str | list[int], index: int, request: CompletionRequest
) -> Prompt:
    if isinstance(raw, str):
        check_text(settings, raw, f"prompt[{index}]")
        encoding = tokenizer.encode(raw)
        ids, text = encoding.ids, raw
        offsets = tokenizer.source_offsets(raw, encoding)
    else:
        _vocabulary_ids(tokenizer, raw, "prompt", f"prompt[{index}]")
        check_count(len(raw), settings.max_text_chars, f"tokens in prompt[{index}]", "max_text_chars")
        ids = list(raw)
        text, offsets = tokenizer.decode(ids), tokenizer.text_offsets(ids)
    keep = request.truncate_prompt_tokens
    if keep is not None and keep >= 0 and len(ids) > keep:  # -1: every token (an RNN has no context window)
        ids = ids[len(ids) - keep :] if request.truncation_side == "left" else ids[:keep]
        text, offsets = tokenizer.decode(ids), tokenizer.text_offsets(ids)
    if ids and ids[0] == tokenizer.boundary_id:
        return Prompt(text, ids[1:], True, offsets)
    return Prompt(text, ids, False, offsets)


# ---- whole answers ----------------------------------------------------------------------


@dataclass(frozen=True)
class PromptOutcome:
    """One prompt's choices and what feeding it computed, as given (the boundary with no number)."""

    choices: list[Choice]
    scored: rendered.ScoredPrompt


async def complete(models: ModelRegistry, settings: Settings, request: CompletionRequest) -> CompletionResponse:
    """The whole answer: the request checked, admitted (EngineBusy when full) and generated."""
    prepared = prepare_completion(models, settings, request)
    if request.suffix is not None:
        text = prepared.prompts[0].text
        filled, generated = await fill_middle(prepared.models, prepared.settings, prepared.served, request, text)
        return prepared.response(filled, prepared.usage(generated))
    engine = prepared.served.engine
    ids = [prompt.ids for prompt in prepared.prompts]
    groups = prefix_groups(ids) if prepared.settings.share_prefixes else [([], [i]) for i in range(len(ids))]
    # Shared prefixes first (queued feeds), then every generation admitted at once: all or none.
    heads = await asyncio.gather(
        *(
            engine.feed(engine.fresh(), prefix, prepared.prompt_logprobs, prepared.top, request.priority)
            for prefix, _ in groups
            if prefix
        )
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
                    request.priority,
                )
            )
        found = await asyncio.gather(*(collect(generation) for generation in generations))
    finally:
        for generation in generations:  # a refusal, or a client gone: nothing keeps running
            generation.cancel()
    choices: list[CompletionChoice] = []
    generated, cached = 0, sum(head.cached for head in heads)
    for index, (prompt, prompt_choices) in enumerate(zip(prepared.prompts, found, strict=True)):
        head = starts[index][1]
        result = prompt_choices[0].result
        cached += result.cached
        outcome = PromptOutcome(
            prompt_choices,
            scored(prepared, prompt, head.logprobs + result.fed_logprobs, [*head.top, *result.fed_top]),
        )
        generated += sum(len(choice.result.token_ids) for choice in prompt_choices)
        for rank, choice in enumerate(_best(prompt_choices, request.n)):
            choices.append(_choice(prepared, index * request.n + rank, prompt, outcome, choice))
    return prepared.response(choices, prepared.usage(generated, cached))


def scored(
    prepared: PreparedCompletion, prompt: Prompt, logprobs: list[float], top: list[list[tuple[int, float]]]
) -> rendered.ScoredPrompt:
    """A prompt's tokens as given with their numbers (none for a boundary it started at)."""
    values: list[float | None] = list(logprobs) if logprobs else [None] * len(prompt.ids)
    tops: list[list[tuple[int, float]] | None] = [*top, *([None] * (len(prompt.ids) - len(top)))]
    if prompt.starts_at_boundary:
        values, tops = [None, *values], [None, *tops]
    return rendered.ScoredPrompt(prompt.given(prepared.tokenizer.boundary_id), values, tops, prompt.offsets)


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
    request, spelling = prepared.request, prepared.spelling
    text = prompt.text + choice.text if request.echo else choice.text
    logprobs = None
    if request.logprobs is not None:
        start = len(prompt.text) if request.echo else 0
        logprobs = rendered.generated(spelling, choice.events, last_prompt_token(prepared, prompt), start)
        if request.echo:
            logprobs = rendered.joined(rendered.echoed(spelling, outcome.scored), logprobs)
    given = prompt.given(prepared.tokenizer.boundary_id)
    return CompletionChoice(
        index=index,
        text=text,
        logprobs=logprobs,
        finish_reason=openai_finish(choice.result.finish_reason),
        stop_reason=choice.result.stop_reason,
        prompt_logprobs=None if request.prompt_logprobs is None else rendered.prompt_logprobs(spelling, outcome.scored),
        prompt_token_ids=given if request.return_token_ids else None,
        token_ids=list(choice.result.token_ids) if request.return_token_ids else None,
    )


def last_prompt_token(prepared: PreparedCompletion, prompt: Prompt) -> int:
    """The token before the first generated one."""
    return prompt.ids[-1] if prompt.ids else prepared.tokenizer.boundary_id


def openai_finish(reason: FinishReason) -> CompletionFinishReason:
    return "length" if reason == "length" else "stop"
