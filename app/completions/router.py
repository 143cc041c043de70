"""POST /v1/completions (OpenAI-compatible text completions)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from app.api.schemas import event_stream_response
from app.completions import serving
from app.completions.protocol import CompletionRequest, CompletionResponse
from app.dependencies import ModelsDep, SettingsDep
from app.http.disconnect import unless_client_leaves
from app.http.sse import event_source

router = APIRouter(prefix="/v1", tags=["completions"])


@router.post("/completions", response_model=CompletionResponse, responses=event_stream_response(None))
async def completions(
    body: CompletionRequest, models: ModelsDep, settings: SettingsDep, request: Request
) -> CompletionResponse | EventSourceResponse:
    if body.stream:
        generation, renderer = await serving.start_stream(
            models, settings, body
        )  # admission (429) before the stream opens
        return event_source(generation, renderer)
    return await unless_client_leaves(request, serving.complete(models, settings, body))
