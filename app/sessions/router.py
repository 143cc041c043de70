"""/v1/sessions: create, feed, generate (whole or streamed), next-token, fork, inspect, end, export, import."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sse_starlette.sse import EventSourceResponse

from app.api.schemas import event_stream_response
from app.dependencies import SessionsDep
from app.http.disconnect import unless_client_leaves
from app.http.security import CallerDep
from app.http.sse import event_source
from app.sessions.protocol import (
    SessionCreateRequest,
    SessionFeedRequest,
    SessionFeedResponse,
    SessionForkRequest,
    SessionGenerateRequest,
    SessionGenerateResponse,
    SessionInfo,
    SessionNextTokenResponse,
)
from app.sessions.transfer import MEDIA_TYPE

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@router.post("", status_code=201)
async def create_session(body: SessionCreateRequest, sessions: SessionsDep, caller: CallerDep) -> SessionInfo:
    return await sessions.create(body, owner=caller)


@router.post(
    "/import",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "a file from GET /v1/sessions/{id}/export",
            "content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def import_session(
    request: Request,
    sessions: SessionsDep,
    caller: CallerDep,
    model: Annotated[str | None, Query(description="the model to continue it (default: the file's)")] = None,
    ttl: Annotated[float | None, Query(gt=0, description="seconds of inactivity before it expires")] = None,
) -> SessionInfo:
    return await sessions.import_file(await request.body(), model=model, ttl=ttl, owner=caller)


@router.get("/{session_id}")
async def get_session(session_id: str, sessions: SessionsDep, caller: CallerDep) -> SessionInfo:
    return await sessions.get(session_id, owner=caller)


@router.delete("/{session_id}", status_code=204)
async def delete_session(session_id: str, sessions: SessionsDep, caller: CallerDep) -> Response:
    await sessions.delete(session_id, owner=caller)
    return Response(status_code=204)


@router.post("/{session_id}/feed")
async def feed(
    session_id: str, body: SessionFeedRequest, sessions: SessionsDep, caller: CallerDep
) -> SessionFeedResponse:
    return await sessions.feed(session_id, body, owner=caller)


@router.post(
    "/{session_id}/generate",
    response_model=SessionGenerateResponse,
    responses=event_stream_response(["token", "done", "error"]),
)
async def generate(
    session_id: str, body: SessionGenerateRequest, sessions: SessionsDep, caller: CallerDep, request: Request
) -> SessionGenerateResponse | EventSourceResponse:
    prepared = await sessions.start_generation(session_id, body, owner=caller)  # 404/409/429 before a stream opens
    if body.stream:
        return event_source(prepared.generation, sessions.stream(prepared))
    try:
        return await unless_client_leaves(request, sessions.generate(prepared))
    finally:
        prepared.generation.cancel()  # a no-op once finished; covers a client gone before it was awaited


@router.get("/{session_id}/next-token")
async def next_token(
    session_id: str,
    sessions: SessionsDep,
    caller: CallerDep,
    top_k: Annotated[int, Query(ge=0, description="entries to return, most likely first; 0 = all")] = 10,
    model: Annotated[str | None, Query(description="409 unless the session belongs to this model")] = None,
) -> SessionNextTokenResponse:
    return await sessions.next_token(session_id, top_k or None, model, owner=caller)


@router.post("/{session_id}/fork", status_code=201)
async def fork(
    session_id: str, sessions: SessionsDep, caller: CallerDep, body: SessionForkRequest | None = None
) -> SessionInfo:
    return await sessions.fork(session_id, body or SessionForkRequest(), owner=caller)


@router.get(
    "/{session_id}/export",
    response_class=Response,
    responses={200: {"content": {MEDIA_TYPE: {}}, "description": "the session as a safetensors file"}},
)
async def export(session_id: str, sessions: SessionsDep, caller: CallerDep) -> Response:
    data = await sessions.export(session_id, owner=caller)
    disposition = f'attachment; filename="{session_id}.safetensors"'  # the id is 32 hex digits (else 404 above)
    return Response(data, media_type=MEDIA_TYPE, headers={"Content-Disposition": disposition})
