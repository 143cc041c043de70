"""Schemas of /v1/completions, shaped like OpenAI's text completions API.

Every field OpenAI defines is honoured (`user` is taken and ignored, as it only labels
the caller); fields OpenAI does not define are tolerated, so clients that send their own
extras keep working. `top_k`, `min_p`, `repetition_penalty` and `min_tokens` are ours.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.protocol.common import LogitBias, Probability, Seed, Text, Usage

TokenIds = list[int]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = Field(default=False, description="send a last chunk with the usage and no choices")


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    prompt: Text | list[Text] | TokenIds | list[TokenIds] = Field(
        description="a text, token ids, or a list of either (one choice set per prompt)"
    )
    suffix: Text | None = Field(default=None, description="text after the completion: filled with the backward partner")
    max_tokens: int = Field(default=16, ge=0)
    min_tokens: int = Field(default=0, ge=0, description="word models: no end of text before this many tokens")
    temperature: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    top_p: Probability = 1.0
    top_k: int = Field(default=0, ge=0)
    min_p: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    repetition_penalty: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2, allow_inf_nan=False)
    logit_bias: dict[str, LogitBias] | None = Field(default=None, description="token id (string) -> bias, -100..100")
    n: int = Field(default=1, ge=1, description="choices per prompt: the prompt is fed once, its state forked n ways")
    best_of: int | None = Field(default=None, ge=1, description="sample this many, return the n likeliest per token")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(default=None, ge=0, description="top alternatives per token; null = no logprobs")
    echo: bool = Field(default=False, description="prepend the prompt (with its logprobs when logprobs is set)")
    stop: Text | list[Text] | None = None
    seed: Seed | None = Field(default=None, description="choice i of a prompt draws from seed + i")
    user: str | None = Field(default=None, description="accepted and ignored (OpenAI's end-user label)")


# OpenAI's finish reasons: the engine's `eos` (a word model generated <eos>) is reported as `stop`.
CompletionFinishReason = Literal["length", "stop"]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: CompletionFinishReason | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None
