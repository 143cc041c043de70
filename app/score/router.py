"""POST /v1/score."""

from __future__ import annotations

from fastapi import APIRouter

from app.dependencies import ModelsDep, SettingsDep
from app.score import serving
from app.score.protocol import ScoreRequest, ScoreResponse

router = APIRouter(prefix="/v1", tags=["score"])


@router.post("/score")
async def score(body: ScoreRequest, models: ModelsDep, settings: SettingsDep) -> ScoreResponse:
    return await serving.score(models, settings, body)
