"""Schemas of /v1/completions, shaped like OpenAI's text completions API.

Every field OpenAI defines is honoured (`user` is taken and ignored, as it only labels
the caller); fields OpenAI does not define are tolerated, so clients that send their own
extras keep working. `top_k`, `min_p`, `repetition_penalty`, `stop_at_eos`, `allow_unk`
(the shared sampling fields), the constraint fields (vLLM's `structured_outputs` and
`guided_*`, and `response_format`, which OpenAI defines for chat) and `min_tokens` are ours.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import SamplingFields, Text, Usage

TokenIds = list[int]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = Field(default=False, description="send a last chunk with the usage and no choices")


class CompletionRequest(SamplingFields):
    """OpenAI's fields; the sampling fields are the shared ones, with OpenAI's defaults where they differ."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    prompt: Text | list[Text] | TokenIds | list[TokenIds] = Field(
        description="a text, token ids, or a list of either (one choice set per prompt)"
    )
    suffix: Text | None = Field(default=None, description="text after the completion: filled with the backward partner")
    max_tokens: int = Field(default=16, ge=0)
    min_tokens: int = Field(default=0, ge=0, description="word models: no end of text before this many tokens")
    n: int = Field(default=1, ge=1, description="choices per prompt: the prompt is fed once, its state forked n ways")
    best_of: int | None = Field(default=None, ge=1, description="sample this many, return the n likeliest per token")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(  # type: ignore[assignment]  # OpenAI's null (no logprobs) is not our 0
        default=None, ge=0, description="top alternatives per token; null = no logprobs"
    )
    echo: bool = Field(default=False, description="prepend the prompt (with its logprobs when logprobs is set)")
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
