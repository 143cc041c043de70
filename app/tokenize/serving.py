"""The root tokenizer endpoints (vLLM's shape) on top of the models' own tokenisation.

A fresh state is primed with the model's line end (see model/tokenizer.py), so no
special token is ever added to the ids: `eos_token` is that line end, `bos_token` is
none. An evaluation client that prepends `eos_token` as its own start-of-text token
therefore asks for a second line end; docs/lm-eval.md says what the completions
endpoint makes of it.
"""

from __future__ import annotations

from typing import Literal

from app.models import serving as native
from app.models.registry import ModelRegistry
from app.settings import Settings
from app.tokenize.protocol import (
    DetokenizeTokensRequest,
    DetokenizeTokensResponse,
    TokenizePromptRequest,
    TokenizePromptResponse,
    TokenizerInfo,
)
from model.tokenizer import UNK

TOKENIZER_CLASSES: dict[str, Literal["CharTokenizer", "WordTokenizer", "SubwordTokenizer"]] = {
    "char": "CharTokenizer",
    "word": "WordTokenizer",
    "subword": "SubwordTokenizer",
}


def tokenizer_info(models: ModelRegistry, settings: Settings, model_id: str | None) -> TokenizerInfo:
    served = models.get(model_id)
    tokenizer = served.checkpoint.tokenizer
    return TokenizerInfo(
        model=served.id,
        tokenizer_class=TOKENIZER_CLASSES[tokenizer.kind],
        level=tokenizer.kind,
        vocab_size=tokenizer.vocab_size,
        # The token that ends a line and primes a fresh state; it encodes to the boundary id alone.
        eos_token=tokenizer.boundary_text,
        unk_token=None if tokenizer.unk_id is None else UNK,
        lowercase=tokenizer.lowercase,
        model_max_length=settings.max_text_chars,
    )


def tokenize(models: ModelRegistry, settings: Settings, request: TokenizePromptRequest) -> TokenizePromptResponse:
    _, encoding = native.encode(models, settings, request.model, request.prompt)
    return TokenizePromptResponse(
        count=len(encoding.ids),
        # Every token is at least one character, so max_text_chars bounds the tokens of any prompt.
        max_model_len=settings.max_text_chars,
        tokens=encoding.ids,
        token_strs=encoding.tokens if request.return_token_strs else None,
    )


def detokenize(models: ModelRegistry, settings: Settings, request: DetokenizeTokensRequest) -> DetokenizeTokensResponse:
    _, text = native.decode(models, settings, request.model, request.tokens)
    return DetokenizeTokensResponse(prompt=text)
