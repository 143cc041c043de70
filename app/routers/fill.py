"""POST /v1/fill."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.dependencies import ModelsDep, SettingsDep
from app.disconnect import unless_client_leaves
from app.protocol.fill import FillRequest, FillResponse
from app.serving import fill as serving

router = APIRouter(prefix="/v1", tags=["fill"])


@router.post("/fill")
async def fill(body: FillRequest, models: ModelsDep, settings: SettingsDep, request: Request) -> FillResponse:
    return await unless_client_leaves(request, serving.fill(models, settings, body))
