"""POST /v1/generate (whole or streamed, sampled or beam search) and POST /v1/next-token."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from app.api.schemas import event_stream_response
from app.dependencies import ModelsDep, SettingsDep
from app.generate import beam, serving
from app.generate.protocol import GenerateRequest, GenerateResponse, NextTokenRequest, NextTokenResponse
from app.http.disconnect import unless_client_leaves
from app.http.sse import event_source

router = APIRouter(prefix="/v1", tags=["generate"])


@router.post("/generate", response_model=GenerateResponse, responses=event_stream_response(["token", "done", "error"]))
async def generate(
    body: GenerateRequest, models: ModelsDep, settings: SettingsDep, request: Request
) -> GenerateResponse | EventSourceResponse:
    if body.beam_width > 1 or "length_penalty" in body.model_fields_set:
        return await unless_client_leaves(request, beam.search(models, settings, body))
    if body.stream:
        generation, renderer = await serving.start_stream(
            models, settings, body
        )  # admission (429) before the stream opens
        return event_source(generation, renderer)
    return await unless_client_leaves(request, serving.generate(models, settings, body))


@router.post("/next-token")
async def next_token(body: NextTokenRequest, models: ModelsDep, settings: SettingsDep) -> NextTokenResponse:
    return await serving.next_token(models, settings, body)
