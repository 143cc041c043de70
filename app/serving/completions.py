"""OpenAI-compatible text completions on top of the engine.

`echo` with `logprobs` and `max_tokens: 0` scores a prompt: every prompt token gets its
log-probability given the start of a line and the tokens before it (so even the first
one has a number, where OpenAI gives null); prompt tokens carry no top alternatives.
Finish reason `eos` (a word model generated <eos>) is reported as OpenAI's `stop`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from app.engine import Generation, GenerationResult, TokenEvent
from app.errors import InvalidRequest
from app.protocol.common import SamplingFields, Usage
from app.protocol.completions import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse
from app.registry import ModelRegistry, ServedModel
from app.serving.generate import PreparedGeneration
from app.serving.limits import check_count, check_text
from app.serving.render import Choice, Event, collect
from app.serving.sampling import generation_settings
from app.settings import Settings
from model.tokenizer import Tokenizer


@dataclass(frozen=True)
class PreparedCompletion:
    request: CompletionRequest
    served: ServedModel
    prompts: list[str]
    generations: list[PreparedGeneration]
    id: str
    created: int

    @property
    def prompt_logprobs(self) -> bool:
        return self.request.echo and self.request.logprobs is not None


def prepare_completion(models: ModelRegistry, settings: Settings, request: CompletionRequest) -> PreparedCompletion:
    served = models.get(request.model)
    prompts = [request.prompt] if isinstance(request.prompt, str) else list(request.prompt)
    if not prompts:
        raise InvalidRequest("prompt must be a string or a non-empty list of strings")
    check_count(len(prompts), settings.max_score_texts, "prompts", "max_score_texts")
    if request.stream and len(prompts) > 1:
        raise InvalidRequest("stream needs a single prompt")
    if request.stream and request.echo and request.logprobs is not None:
        raise InvalidRequest("echo with logprobs (prompt scoring) is not streamed; send stream=false")
    fields = SamplingFields(
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_k=request.top_k,
        top_p=request.top_p,
        repetition_penalty=request.repetition_penalty,
        stop=request.stop,
        seed=request.seed,
        logprobs=request.logprobs or 0,
    )
    generations = []
    for index, prompt in enumerate(prompts):
        check_text(settings, prompt, f"prompt[{index}]" if len(prompts) > 1 else "prompt")
        ids = served.checkpoint.tokenizer.encode(prompt).ids
        generations.append(PreparedGeneration(served, ids, generation_settings(settings, served, fields, ids)))
    return PreparedCompletion(
        request, served, prompts, generations, id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time())
    )


def start_completion(prepared: PreparedCompletion) -> list[Generation]:
    """Admit every prompt's generation (EngineBusy when the engine is full: none is left running)."""
    started: list[Generation] = []
    try:
        for generation in prepared.generations:
            engine = generation.served.engine
            started.append(
                engine.generate(engine.fresh(), generation.settings, generation.prompt_ids, prepared.prompt_logprobs)
            )
    except BaseException:
        for admitted in started:
            admitted.cancel()
        raise
    return started


async def complete(prepared: PreparedCompletion, started: list[Generation]) -> CompletionResponse:
    try:
        outcomes = await asyncio.gather(*(collect(generation) for generation in started))
    finally:
        for generation in started:
            generation.cancel()
    choices = [
        _choice(prepared, index, prompt, generation, choice.events, choice.result)
        for index, (prompt, generation, (choice,)) in enumerate(
            zip(prepared.prompts, prepared.generations, outcomes, strict=True)
        )
    ]
    usages = [
        g.usage(len(choice.result.token_ids)) for g, (choice,) in zip(prepared.generations, outcomes, strict=True)
    ]
    return CompletionResponse(
        id=prepared.id,
        created=prepared.created,
        model=prepared.served.id,
        choices=choices,
        usage=Usage.of(sum(u.prompt_tokens for u in usages), sum(u.completion_tokens for u in usages)),
    )


def _choice(
    prepared: PreparedCompletion,
    index: int,
    prompt: str,
    generation: PreparedGeneration,
    events: list[TokenEvent],
    result: GenerationResult,
) -> CompletionChoice:
    completion = "".join(event.text for event in events)
    text = prompt + completion if prepared.request.echo else completion
    logprobs = None
    if prepared.request.logprobs is not None:
        tokenizer = generation.served.checkpoint.tokenizer
        logprobs = _generated_logprobs(tokenizer, events, start=len(prompt) if prepared.request.echo else 0)
        if prepared.request.echo:
            logprobs = _join(_prompt_logprobs(tokenizer, prompt, generation.prompt_ids, result.fed_logprobs), logprobs)
    return CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=_finish(result))


def _finish(result: GenerationResult) -> Literal["length", "stop"]:
    return "length" if result.finish_reason == "length" else "stop"


def _prompt_logprobs(tokenizer: Tokenizer, prompt: str, ids: list[int], logprobs: list[float]) -> CompletionLogprobs:
    """Prompt tokens with offsets into the prompt as sent (found left to right; normalised text may differ)."""
    surfaces = tokenizer.encode(prompt).tokens
    offsets, position = [], 0
    for surface in surfaces:
        found = prompt.find("\n" if surface == "<eos>" else surface, position)
        if found < 0:  # NFC or lower-casing changed the surface form: keep the running position
            found = position
        offsets.append(found)
        position = found + len(surface)
    tokens = [tokenizer.piece(i, previous) for i, previous in zip(ids, [None, *ids[:-1]], strict=True)]
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=logprobs, top_logprobs=[None] * len(ids), text_offset=offsets
    )


def _generated_logprobs(tokenizer: Tokenizer, events: list[TokenEvent], start: int) -> CompletionLogprobs:
    """Generated tokens; offsets follow their pieces (a stop string may cut the text before the last ones)."""
    offsets, position = [], start
    for event in events:
        offsets.append(position)
        position += len(event.piece)
    return CompletionLogprobs(
        tokens=[event.piece for event in events],
        token_logprobs=[event.logprob for event in events],
        top_logprobs=[_top(tokenizer, event) for event in events],
        text_offset=offsets,
    )


def _top(tokenizer: Tokenizer, event: TokenEvent) -> dict[str, float]:
    return {tokenizer.tokens[i]: logprob for i, logprob in event.top}


def _join(first: CompletionLogprobs, second: CompletionLogprobs) -> CompletionLogprobs:
    return CompletionLogprobs(
        tokens=first.tokens + second.tokens,
        token_logprobs=first.token_logprobs + second.token_logprobs,
        top_logprobs=first.top_logprobs + second.top_logprobs,
        text_offset=first.text_offset + second.text_offset,
    )


class CompletionStream:
    """OpenAI's stream: `data: {chunk}` per token, a last chunk with finish_reason, then `data: [DONE]`."""

    def __init__(self, prepared: PreparedCompletion) -> None:
        self.prepared = prepared
        self.tokenizer = prepared.served.checkpoint.tokenizer
        self.position = len(prepared.prompts[0]) if prepared.request.echo else 0
        self.echoed = not prepared.request.echo

    def token(self, event: TokenEvent) -> Event:
        logprobs = None
        if self.prepared.request.logprobs is not None:
            logprobs = _generated_logprobs(self.tokenizer, [event], start=self.position)
        self.position += len(event.piece)
        text = event.text
        if not self.echoed:  # the prompt goes out with the first token
            text, self.echoed = self.prepared.prompts[0] + text, True
        return _chunk(self.prepared, text, logprobs, None)

    async def finish(self, choices: list[Choice]) -> list[Event]:
        (choice,) = choices
        closing = []
        if not self.echoed:
            closing.append(_chunk(self.prepared, self.prepared.prompts[0], None, None))
        return [*closing, _chunk(self.prepared, "", None, _finish(choice.result)), {"data": "[DONE]"}]

    def error(self, error_type: str, message: str) -> Event:
        return {"data": json.dumps({"error": {"type": error_type, "message": message}})}


def _chunk(
    prepared: PreparedCompletion,
    text: str,
    logprobs: CompletionLogprobs | None,
    finish: Literal["length", "stop"] | None,
) -> dict[str, Any]:
    choice = CompletionChoice(index=0, text=text, logprobs=logprobs, finish_reason=finish)
    chunk = CompletionResponse(
        id=prepared.id, created=prepared.created, model=prepared.served.id, choices=[choice], usage=None
    )
    return {"data": chunk.model_dump_json()}
