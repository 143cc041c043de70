"""GET /health, /ready, /info and /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.dependencies import MetricsDep, SettingsDep
from app.http.errors import UNAUTHORIZED_RESPONSE
from app.http.security import authenticate
from app.models.registry import ModelRegistry
from app.sessions.serving import SessionService

router = APIRouter(tags=["system"])

LIMITS = (
    "max_body_bytes",
    "max_text_chars",
    "max_tokens_limit",
    "default_max_tokens",
    "max_score_texts",
    "max_logprobs",
    "max_stop_strings",
    "max_stop_chars",
    "max_active_sequences",
    "max_queued_requests",
    "prefill_tokens_per_step",
    "max_fill_candidates",
    "max_fill_chars",
    "max_beam_width",
    "max_constraint_bytes",
    "constraint_compile_seconds",
    "session_ttl",
    "max_session_ttl",
)


@router.get("/health")
def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness: every model loaded and its engine running and taking work, and the session store answering.

    While an engine is full (every decode row held, or the feed queue full) it says 503,
    so that a balancer sends the next requests to another replica instead of a 429.
    """
    models: ModelRegistry | None = request.app.state.models
    sessions: SessionService | None = request.app.state.sessions
    checks = {
        "models": models is not None and models.ready,
        "accepting": models is not None and models.accepting,
        "redis": sessions is not None and await sessions.reachable(),
    }
    status = 200 if all(checks.values()) else 503
    body: dict[str, Any] = {"status": "ready" if status == 200 else "not ready", "checks": checks}
    if models is not None:
        body["models"] = sorted(models.models)
    return JSONResponse(body, status_code=status)


@router.get("/info", dependencies=[Depends(authenticate)], responses=UNAUTHORIZED_RESPONSE)
def info(request: Request, settings: SettingsDep) -> dict[str, Any]:
    """Every limit in force, and what is loaded."""
    models: ModelRegistry | None = request.app.state.models
    return {
        "limits": {name: getattr(settings, name) for name in LIMITS},
        "default_model": models.default_id if models else None,
        "models": sorted(models.models) if models else [],
        "fill_pairs": dict(sorted(models.pairs.backward_of.items())) if models else {},
        "device": settings.device,
        "dtype": settings.dtype,  # the setting; each model's own precision is in /v1/models
        "model_dtypes": {model_id: served.dtype for model_id, served in sorted(models.models.items())}
        if models
        else {},
    }


@router.get(
    "/metrics", dependencies=[Depends(authenticate)], response_class=PlainTextResponse, responses=UNAUTHORIZED_RESPONSE
)
def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
