"""GET /tokenizer_info, POST /tokenize and /detokenize at the root (vLLM's shape, for evaluation clients)."""

from __future__ import annotations

from fastapi import APIRouter

from app.dependencies import ModelsDep, SettingsDep
from app.tokenize import serving
from app.tokenize.protocol import (
    DetokenizeTokensRequest,
    DetokenizeTokensResponse,
    TokenizePromptRequest,
    TokenizePromptResponse,
    TokenizerInfo,
)

router = APIRouter(tags=["tokenizer"])


@router.get("/tokenizer_info")
def tokenizer_info(models: ModelsDep, settings: SettingsDep, model: str | None = None) -> TokenizerInfo:
    return serving.tokenizer_info(models, settings, model)


@router.post("/tokenize")
def tokenize(body: TokenizePromptRequest, models: ModelsDep, settings: SettingsDep) -> TokenizePromptResponse:
    return serving.tokenize(models, settings, body)


@router.post("/detokenize")
def detokenize(body: DetokenizeTokensRequest, models: ModelsDep, settings: SettingsDep) -> DetokenizeTokensResponse:
    return serving.detokenize(models, settings, body)
