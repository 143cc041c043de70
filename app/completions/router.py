"""POST /v1/completions (OpenAI-compatible text completions), and POST /invocations (vLLM's SageMaker route)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sse_starlette.sse import EventSourceResponse

from app.api.schemas import event_stream_response
from app.chat.router import CHAT_REFUSED
from app.completions import beam, serving, stream
from app.completions.protocol import CompletionRequest, CompletionResponse
from app.dependencies import ModelsDep, SettingsDep
from app.errors import InvalidRequest, Unsupported
from app.http.disconnect import unless_client_leaves
from app.http.sse import event_source

router = APIRouter(prefix="/v1", tags=["completions"])
invocations_router = APIRouter(tags=["completions"])


@router.post("/completions", response_model=CompletionResponse, responses=event_stream_response(None))
async def completions(
    body: CompletionRequest, models: ModelsDep, settings: SettingsDep, request: Request
) -> CompletionResponse | EventSourceResponse:
    if body.stream:
        generation, renderer = await stream.start_stream(models, settings, body)  # admission (429) before it opens
        return event_source(generation, renderer)
    answer = beam.complete_with_beams if body.use_beam_search else serving.complete
    return await unless_client_leaves(request, answer(models, settings, body))


@invocations_router.post("/invocations", response_model=CompletionResponse, responses=event_stream_response(None))
async def invocations(
    body: Annotated[dict[str, Any], Body()], models: ModelsDep, settings: SettingsDep, request: Request
) -> CompletionResponse | EventSourceResponse:
    """vLLM's SageMaker entry point: a body with `prompt` is a completion, one with `messages` a chat (not offered)."""
    if "messages" in body:
        raise Unsupported(CHAT_REFUSED, use="/v1/completions")
    if "prompt" not in body:
        raise InvalidRequest(
            "the body is neither a completion (it has no prompt) nor a chat (no messages)", field="prompt"
        )
    try:
        parsed = CompletionRequest.model_validate(body)
    except ValidationError as exc:  # as FastAPI reports a body it cannot take (400 on this route)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc
    return await completions(parsed, models, settings, request)
