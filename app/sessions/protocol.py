"""Schemas of /v1/sessions: create, feed, generate, next-token, fork, inspect."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.api.schemas import Request, SamplingFields, Text, Usage
from app.engine import FinishReason
from app.generate.protocol import GeneratedToken, NextTokenResponse
from app.score.protocol import ScoredToken


class Versioned(BaseModel):
    """Optimistic concurrency: the call fails with 409 unless the session is at this version."""

    expected_version: int | None = Field(default=None, ge=1, description="409 unless the session is at this version")


class SessionCreateRequest(Request):
    prompt: Text = Field(default="", description="text fed right away, from the start of a line")
    ttl: float | None = Field(default=None, gt=0, description="seconds of inactivity before the session expires")
    flush: bool = Field(default=False, description="word models: tokenise the prompt's unfinished last word now")


class SessionFeedRequest(Request, Versioned):
    text: Text = Field(description="appended to everything fed so far")
    flush: bool = Field(default=False, description="word models: tokenise the unfinished last word now")


class SessionGenerateRequest(Request, SamplingFields, Versioned):
    stream: bool = Field(default=False, description="answer as Server-Sent Events, one per token")


class SessionForkRequest(Request, Versioned):
    ttl: float | None = Field(default=None, gt=0, description="the copy's TTL (the original's when omitted)")


class SessionInfo(BaseModel):
    id: str
    model: str
    token_count: int  # tokens consumed so far (the boundary token a session starts with is not counted)
    pending_text: str  # received but not tokenised yet: a word model's unfinished last word
    version: int  # grows by one with every change
    ttl: float  # seconds of inactivity before it expires; every use starts it again
    expires_in: float  # seconds left now
    created_at: datetime
    updated_at: datetime


class SessionFeedResponse(BaseModel):
    session: SessionInfo
    tokens: list[ScoredToken]  # log p(token | everything before it), natural log
    logprob: float  # their sum


class SessionGenerateResponse(BaseModel):
    session: SessionInfo
    text: str
    finish_reason: FinishReason
    tokens: list[GeneratedToken]
    usage: Usage


class SessionStreamDone(BaseModel):
    """The last event of a session stream: the session after the generated text."""

    session: SessionInfo
    model: str
    finish_reason: FinishReason
    usage: Usage


class SessionNextTokenResponse(NextTokenResponse):
    session: SessionInfo
