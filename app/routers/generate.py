"""POST /v1/generate (whole or streamed, sampled or beam search) and POST /v1/next-token."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from app.dependencies import ModelsDep, SettingsDep
from app.disconnect import unless_client_leaves
from app.protocol.common import event_stream_response
from app.protocol.generate import GenerateRequest, GenerateResponse, NextTokenRequest, NextTokenResponse
from app.serving import beam
from app.serving import generate as serving
from app.sse import event_source

router = APIRouter(prefix="/v1", tags=["generate"])


@router.post("/generate", response_model=GenerateResponse, responses=event_stream_response(["token", "done", "error"]))
async def generate(
    body: GenerateRequest, models: ModelsDep, settings: SettingsDep, request: Request
) -> GenerateResponse | EventSourceResponse:
    if body.beam_width > 1 or "length_penalty" in body.model_fields_set:
        prepared, search = beam.prepare_beam(models, settings, body)
        run = beam.start_beam(prepared, search)  # admission (429) before anything is answered
        try:
            hypotheses = await unless_client_leaves(request, run.hypotheses())
        finally:
            run.cancel()  # a no-op once answered; covers a client gone before the search was awaited
        return beam.beam_response(prepared, search, hypotheses)
    prepared = serving.prepare_generation(models, settings, body)
    generation = prepared.start()  # admission (429) happens before a stream opens
    if body.stream:
        return event_source(generation, serving.NativeStream(prepared))
    try:
        return await unless_client_leaves(request, serving.generate(prepared, generation))
    finally:
        generation.cancel()  # a no-op once finished; covers a client gone before it was awaited


@router.post("/next-token")
async def next_token(body: NextTokenRequest, models: ModelsDep, settings: SettingsDep) -> NextTokenResponse:
    return await serving.next_token(models, settings, body)
