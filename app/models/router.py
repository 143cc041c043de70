"""GET /v1/models and /v1/models/{id}, POST /v1/tokenize and /v1/detokenize."""

from __future__ import annotations

from fastapi import APIRouter

from app.dependencies import ModelsDep, SettingsDep
from app.models import serving
from app.models.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models")
def list_models(models: ModelsDep) -> ModelList:
    return serving.list_models(models)


@router.get("/models/{model_id}")
def get_model(model_id: str, models: ModelsDep) -> ModelCard:
    return serving.get_model(models, model_id)


@router.post("/tokenize")
def tokenize(body: TokenizeRequest, models: ModelsDep, settings: SettingsDep) -> TokenizeResponse:
    return serving.tokenize(models, settings, body)


@router.post("/detokenize")
def detokenize(body: DetokenizeRequest, models: ModelsDep, settings: SettingsDep) -> DetokenizeResponse:
    return serving.detokenize(models, settings, body)
