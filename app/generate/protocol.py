"""Schemas of /v1/generate (and its stream events) and /v1/next-token."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.api.schemas import Request, SamplingFields, Text, TokenLogprob, Usage
from app.engine import FinishReason


class GenerateRequest(Request, SamplingFields):
    prompt: Text = Field(default="", description="generation continues this text (empty = from the start of a line)")
    stream: bool = Field(default=False, description="answer as Server-Sent Events, one per token")
    beam_width: int = Field(
        default=1, ge=1, description="> 1: beam search for the most likely continuation (no sampling, no stream)"
    )
    length_penalty: float = Field(
        default=0.6, ge=0, allow_inf_nan=False, description="beam search: GNMT length penalty alpha (0 = raw logprob)"
    )


class GeneratedToken(BaseModel):
    """One generated token; `text` is what it added to the visible text (stop strings held back)."""

    id: int
    token: str
    text: str
    logprob: float
    top_logprobs: list[TokenLogprob] | None = None


class BeamSummary(BaseModel):
    """How a beam search ranked its answer: total log-probability and the length-normalised score."""

    beam_width: int
    length_penalty: float
    logprob: float
    score: float


class GenerateResponse(BaseModel):
    model: str
    text: str
    finish_reason: FinishReason
    tokens: list[GeneratedToken]
    usage: Usage
    beam: BeamSummary | None = None  # only for beam_width > 1


class StreamDone(BaseModel):
    """The last event of a stream."""

    model: str
    finish_reason: FinishReason
    usage: Usage


class NextTokenRequest(Request):
    context: Text = Field(default="", description="the text so far (empty = the start of a line)")
    top_k: int | None = Field(
        default=10, ge=1, description="entries to return, most likely first; null = the whole vocabulary"
    )


class TokenProbability(BaseModel):
    id: int
    token: str
    text: str  # what the token would add after the context
    prob: float
    logprob: float


class NextTokenResponse(BaseModel):
    model: str
    context_tokens: int
    top: list[TokenProbability]
    top_mass: float  # total probability of the entries in `top` (1 for the whole vocabulary)
    entropy: float  # nats
    entropy_bits: float
