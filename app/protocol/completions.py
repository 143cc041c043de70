"""Schemas of /v1/completions, shaped like OpenAI's text completions API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.protocol.common import Probability, Seed, Text, Usage


class CompletionRequest(BaseModel):
    """OpenAI's fields (n must be 1; unknown OpenAI fields are ignored) plus top_k and repetition_penalty."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    prompt: Text | list[Text]
    max_tokens: int = Field(default=16, ge=0)
    temperature: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    top_p: Probability = 1.0
    top_k: int = Field(default=0, ge=0)
    repetition_penalty: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    n: int = Field(default=1, ge=1, le=1, description="one choice per prompt")
    stream: bool = False
    logprobs: int | None = Field(default=None, ge=0, description="top alternatives per token; null = no logprobs")
    echo: bool = Field(default=False, description="prepend the prompt (with its logprobs when logprobs is set)")
    stop: Text | list[Text] | None = None
    seed: Seed | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["length", "stop"] | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None
