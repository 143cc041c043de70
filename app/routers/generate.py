"""POST /v1/generate (whole or streamed) and POST /v1/next-token."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from app.dependencies import ModelsDep, SettingsDep
from app.disconnect import unless_client_leaves
from app.protocol.common import event_stream_response
from app.protocol.generate import GenerateRequest, GenerateResponse, NextTokenRequest, NextTokenResponse
from app.serving import beam
from app.serving import generate as serving

router = APIRouter(prefix="/v1", tags=["generate"])


@router.post("/generate", response_model=GenerateResponse, responses=event_stream_response(["token", "done", "error"]))
async def generate(
    body: GenerateRequest, models: ModelsDep, settings: SettingsDep, request: Request
) -> GenerateResponse | EventSourceResponse:
    beam.check_beam_request(settings, body)
    if body.beam_width > 1:
        return await unless_client_leaves(request, beam.beam_generate(models, settings, body))
    prepared = serving.prepare_generation(models, settings, body)
    if body.stream:
        generation = prepared.start()  # admission (429) happens before the stream opens
        # The background task also covers a client gone before the stream's first event.
        return EventSourceResponse(
            serving.stream_generate(prepared, generation), background=BackgroundTask(generation.cancel)
        )
    return await unless_client_leaves(request, serving.generate(prepared))


@router.post("/next-token")
async def next_token(body: NextTokenRequest, models: ModelsDep, settings: SettingsDep) -> NextTokenResponse:
    return await serving.next_token(models, settings, body)
