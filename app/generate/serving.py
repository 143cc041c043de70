"""Generation (whole or streamed) and the next-token distribution, from the start of a line."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from app.api.conversion import generation_settings
from app.api.limits import check_text, check_top_k
from app.api.render import Choice, Event, collect
from app.api.schemas import TokenLogprob, Usage
from app.engine import Generation, GenerationSettings, NextTokenResult, TokenEvent, finite
from app.generate.protocol import (
    GeneratedToken,
    GenerateRequest,
    GenerateResponse,
    NextTokenRequest,
    NextTokenResponse,
    StreamDone,
    TokenProbability,
)
from app.models.registry import ModelRegistry, ServedModel
from app.settings import Settings
from model.tokenizer import Tokenizer


@dataclass(frozen=True)
class PreparedGeneration:
    """A checked request, ready for the engine."""

    served: ServedModel
    prompt_ids: list[int]
    settings: GenerationSettings

    def usage(self, completion_tokens: int) -> Usage:
        return Usage.of(len(self.prompt_ids), completion_tokens)


def prepare_generation(models: ModelRegistry, settings: Settings, request: GenerateRequest) -> PreparedGeneration:
    served = models.get(request.model)
    check_text(settings, request.prompt, "prompt")
    prompt_ids = served.checkpoint.tokenizer.encode(request.prompt).ids
    return PreparedGeneration(served, prompt_ids, generation_settings(settings, served, request, prompt_ids))


def generated_token(tokenizer: Tokenizer, event: TokenEvent) -> GeneratedToken:
    top = None
    if event.top:
        top = [TokenLogprob(id=i, token=tokenizer.tokens[i], logprob=lp) for i, lp in event.top]
    return GeneratedToken(
        id=event.token_id, token=event.piece, text=event.text, logprob=event.logprob, top_logprobs=top
    )


async def start_generation(
    models: ModelRegistry, settings: Settings, request: GenerateRequest
) -> tuple[PreparedGeneration, Generation]:
    """Check the request and admit it to the engine (EngineBusy when full), before any answer starts."""
    prepared = prepare_generation(models, settings, request)
    engine = prepared.served.engine
    return prepared, await engine.generate(engine.fresh(), prepared.settings, prepared.prompt_ids)


async def start_stream(
    models: ModelRegistry, settings: Settings, request: GenerateRequest
) -> tuple[Generation, NativeStream]:
    """The admitted generation (EngineBusy before the stream opens) and its renderer."""
    prepared, generation = await start_generation(models, settings, request)
    return generation, NativeStream(prepared)


async def generate(models: ModelRegistry, settings: Settings, request: GenerateRequest) -> GenerateResponse:
    """The whole answer: checked, admitted (EngineBusy when full) and generated."""
    prepared, generation = await start_generation(models, settings, request)
    tokenizer = prepared.served.checkpoint.tokenizer
    (choice,) = await collect(generation)  # cancelled (its slot freed) if this is
    return GenerateResponse(
        model=prepared.served.id,
        text=choice.text,
        finish_reason=choice.result.finish_reason,
        tokens=[generated_token(tokenizer, event) for event in choice.events],
        usage=prepared.usage(len(choice.result.token_ids)),
    )


class NativeStream:
    """/v1/generate's stream: a `token` event per token, then `done` with the finish reason and usage."""

    def __init__(self, prepared: PreparedGeneration) -> None:
        self.prepared = prepared
        self.tokenizer = prepared.served.checkpoint.tokenizer

    def token(self, event: TokenEvent) -> Event:
        return {"event": "token", "data": generated_token(self.tokenizer, event).model_dump_json()}

    async def finish(self, choices: list[Choice]) -> list[Event]:
        (choice,) = choices
        done = StreamDone(
            model=self.prepared.served.id,
            finish_reason=choice.result.finish_reason,
            usage=self.prepared.usage(len(choice.result.token_ids)),
        )
        return [{"event": "done", "data": done.model_dump_json()}]

    def error(self, body: dict[str, Any]) -> Event:
        return {"event": "error", "data": json.dumps(body)}


async def next_token(models: ModelRegistry, settings: Settings, request: NextTokenRequest) -> NextTokenResponse:
    served = models.get(request.model)
    tokenizer = served.checkpoint.tokenizer
    check_text(settings, request.context, "context")
    check_top_k(tokenizer, request.top_k, served.id)
    ids = tokenizer.encode(request.context).ids
    result = await served.engine.next_token(served.engine.fresh(), ids)
    return next_token_response(served, result, len(ids), request.top_k)


def next_token_response(
    served: ServedModel, result: NextTokenResult, context_tokens: int, top_k: int | None
) -> NextTokenResponse:
    """The `top_k` most likely next tokens (all when None) and the entropy, from the engine's answer."""
    tokenizer = served.checkpoint.tokenizer
    logprobs = result.logprobs.double()  # (V,)
    probs = logprobs.exp()
    entropy = float(-torch.special.xlogy(probs, probs).sum())
    count = top_k or tokenizer.vocab_size
    top_probs, top_ids = torch.topk(probs, count)
    previous = result.end.pending  # the context's last token (or the start-of-line token)
    top = [
        TokenProbability(
            id=int(i),
            token=tokenizer.tokens[int(i)],
            text=tokenizer.piece(int(i), previous),
            prob=float(p),
            logprob=finite(float(logprobs[int(i)])),
        )
        for p, i in zip(top_probs, top_ids, strict=True)
    ]
    return NextTokenResponse(
        model=served.id,
        context_tokens=context_tokens,
        top=top,
        top_mass=float(top_probs.sum()),
        entropy=entropy,
        entropy_bits=entropy / math.log(2),
    )
