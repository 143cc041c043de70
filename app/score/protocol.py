"""Schemas of /v1/score."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.api.schemas import NonEmptyText, Request


class ScoreRequest(Request):
    texts: list[NonEmptyText] = Field(min_length=1, description="texts scored independently")
    bos: bool = Field(default=True, description="condition the first token on the start of a line (KenLM's <s>)")
    eos: bool = Field(default=False, description="also score the end-of-line token after the text (KenLM's </s>)")


class ScoredToken(BaseModel):
    id: int
    token: str
    logprob: float
    unknown: bool


class TextScore(BaseModel):
    logprob: float  # natural log, the sum of the tokens' logprobs
    token_count: int  # tokens scored
    perplexity: float
    bits_per_token: float
    bits_per_char: float | None  # char models only
    unknown_count: int
    tokens: list[ScoredToken]


class ScoreResponse(BaseModel):
    model: str
    bos: bool
    eos: bool
    results: list[TextScore]
