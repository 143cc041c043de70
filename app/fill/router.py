"""POST /v1/fill."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.dependencies import ModelsDep, SettingsDep
from app.fill import serving
from app.fill.protocol import FillRequest, FillResponse
from app.http.disconnect import unless_client_leaves

router = APIRouter(prefix="/v1", tags=["fill"])


@router.post("/fill")
async def fill(body: FillRequest, models: ModelsDep, settings: SettingsDep, request: Request) -> FillResponse:
    return await unless_client_leaves(request, serving.fill(models, settings, body))
