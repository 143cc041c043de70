"""Schemas of the root tokenizer endpoints, in vLLM's shape (what evaluation clients parse).

lm-evaluation-harness's remote tokenizer calls `GET /tokenizer_info`, `POST /tokenize`
with `{"prompt", "add_special_tokens"}` and `POST /detokenize` with `{"tokens"}`, and reads
`eos_token`, `bos_token`, `tokens` and `prompt` from the answers. `model` is optional
everywhere (the default model).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.api.schemas import Request, Text


class TokenizerInfo(BaseModel):
    """The tokenizer's settings, like a tokenizer_config.json (vLLM's /tokenizer_info)."""

    model: str
    tokenizer_class: Literal["CharTokenizer", "WordTokenizer", "SubwordTokenizer"]
    level: Literal["char", "word", "subword"]
    vocab_size: int
    eos_token: str = Field(
        description="the line end: <eos> (word models) or a line break (char and subword models); encodes to one id"
    )
    bos_token: None = Field(
        default=None, description="none is added: the server itself conditions a text on a line end"
    )
    pad_token: None = None
    unk_token: str | None = Field(description="<unk>; none for a subword model, which has no unknown token")
    lowercase: bool = Field(description="word models that lower-case their input (false for char models)")
    chat_template: None = Field(default=None, description="none: these are language models, not chat models")
    model_max_length: int = Field(description="an RNN has no context window: max_text_chars bounds a prompt's tokens")


class TokenizePromptRequest(Request):
    prompt: Text = Field(description="text to tokenize (may be empty)")
    add_special_tokens: bool = Field(
        default=True, description="accepted for compatibility: no special token is ever added to the ids"
    )
    return_token_strs: bool = Field(
        default=False, description="also return each token's vocabulary string (<unk> for an unknown word)"
    )


class TokenizePromptResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeTokensRequest(Request):
    tokens: list[int] = Field(description="token ids, decoded as one text")


class DetokenizeTokensResponse(BaseModel):
    prompt: str
