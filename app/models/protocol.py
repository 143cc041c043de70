"""Schemas of /v1/models, /v1/tokenize and /v1/detokenize."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.api.schemas import NonEmptyText, Request


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    default: bool
    level: str
    cell: str
    num_layers: int
    embedding_size: int
    hidden_size: int
    vocab_size: int
    tie_weights: bool
    parameters: int
    device: str
    dtype: Literal["float32", "bfloat16"]  # the precision it computes in (RNNLM_DTYPE)
    training: dict[str, Any]  # corpus, steps, validation/test perplexity, bits per char...
    direction: Literal["forward", "backward"] = "forward"  # backward: trained on the reversed token stream
    fill_partner: str | None = None  # the other direction's model, used together by /v1/fill
    fill_partner_refused: str | None = None  # why a model named as its partner was not paired


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(Request):
    text: NonEmptyText


class Token(BaseModel):
    id: int
    token: str
    unknown: bool


class TokenizeResponse(BaseModel):
    model: str
    count: int
    tokens: list[Token]


class DetokenizeRequest(Request):
    ids: list[int] = Field(description="token ids, decoded as one text")


class DetokenizeResponse(BaseModel):
    model: str
    text: str
