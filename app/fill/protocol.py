"""Schemas of /v1/fill: fill one gap in a text from its left and right context."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.api.schemas import NonEmptyText, Request

FillMethod = Literal["fast", "exact"]
MethodUsed = Literal["fast", "forward-only", "exact"]


class FillRequest(Request):
    text: NonEmptyText = Field(description="the text with exactly one gap marker where the missing piece goes")
    gap: NonEmptyText = Field(default="___", max_length=32, description="the gap marker")
    method: FillMethod = Field(
        default="fast",
        description="fast: combine the forward and backward next-token distributions at the gap; "
        "exact: rescore the best candidates with the forward model over the whole filled text",
    )
    top_k: int = Field(default=10, ge=1, description="candidates to return, best first")
    rescore: int | None = Field(
        default=None, ge=1, description="exact: candidates rescored (default max(top_k, 32)); must be >= top_k"
    )
    max_chars: int | None = Field(
        default=None, ge=1, description="char models: longest span to fill (default 8, at most max_fill_chars)"
    )


class FillCandidate(BaseModel):
    text: str  # what goes into the gap
    filled: str  # the whole text with the gap filled
    token_ids: list[int]
    score: float  # the ranking score, a log-probability (see `method_used`)
    prob: float  # exp(score) renormalised over the candidates considered (the vocabulary for word `fast`)
    forward_logprob: float  # the forward model's share of the score
    backward_logprob: float | None  # the backward model's share (null without one, and for `exact`)


class FillResponse(BaseModel):
    model: str
    backward_model: str | None  # the partner whose right-to-left view was used, if any
    level: str
    method: FillMethod
    method_used: MethodUsed  # `forward-only` when `fast` had no backward partner
    candidates_from: MethodUsed  # exact: which ranking proposed the rescored candidates
    rescored: int | None  # exact: how many candidates were rescored
    left_tokens: int
    right_tokens: int
    candidates: list[FillCandidate]
