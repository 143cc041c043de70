"""The one mapping of errors to HTTP: a status and `{"error": {"type", "message", ...}}`, never a trace.

`ERROR_KINDS` gives each domain error (app/errors.py) its status and type; `error_body`
builds the one body that JSON answers and a stream's error event (app/http/sse.py) both carry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from app.errors import (
    ClientGone,
    EngineBusy,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    ServiceError,
    SessionConflict,
    Unauthorized,
    Unavailable,
    Unsupported,
)
from app.metrics import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("app")

RETRY_AFTER_SECONDS = 1  # a full engine frees rows every decode step: come back soon


@dataclass(frozen=True)
class ErrorKind:
    """How one class of error answers: its status, its `error.type`, and headers sent with it."""

    status_code: int
    type: str
    headers: dict[str, str] = field(default_factory=dict)


# Each error class answers as the nearest class above it that is listed here.
ERROR_KINDS: dict[type, ErrorKind] = {
    ServiceError: ErrorKind(400, "bad_request"),
    InvalidRequest: ErrorKind(422, "invalid_request"),
    LimitExceeded: ErrorKind(413, "limit_exceeded"),
    NotFound: ErrorKind(404, "not_found"),
    # 404 rather than 400 (nothing is wrong with the request) or 501 (OpenAI clients retry a 5xx).
    Unsupported: ErrorKind(404, "unsupported"),
    SessionConflict: ErrorKind(409, "session_conflict"),
    Unauthorized: ErrorKind(401, "unauthorized", {"WWW-Authenticate": "Bearer"}),
    EngineBusy: ErrorKind(429, "server_busy", {"Retry-After": str(RETRY_AFTER_SECONDS)}),
    Unavailable: ErrorKind(503, "unavailable"),  # EngineClosed and StoreUnavailable too
    ClientGone: ErrorKind(499, "client_closed_request"),  # nginx's "client closed request"
}
INTERNAL_ERROR = ("internal_error", "internal server error")  # a bug: said without a trace

# The routes that speak OpenAI's protocol answer a request they cannot take as OpenAI and vLLM do: 400
# `invalid_request_error` (the SDKs raise BadRequestError), with `param` naming the field, for a malformed body
# and for a well-formed one that cannot be honoured (InvalidRequest) alike. Every other route keeps its 422.
OPENAI_PATHS = frozenset({"/v1/completions", "/invocations"})
OPENAI_INVALID = ErrorKind(400, "invalid_request_error")


def error_kind(exc: ServiceError, openai: bool = False) -> ErrorKind:
    """How `exc` answers; on an OpenAI route (`openai`) an invalid request is OpenAI's 400."""
    if openai and isinstance(exc, InvalidRequest):
        return OPENAI_INVALID
    return next(ERROR_KINDS[cls] for cls in type(exc).__mro__ if cls in ERROR_KINDS)


def error_body(error_type: str, message: str, **details: Any) -> dict[str, Any]:
    """The body of every error answer, JSON or a stream's error event."""
    return {"error": {"type": error_type, "message": message, **details}}


def service_error_body(exc: ServiceError, openai: bool = False) -> dict[str, Any]:
    kind = error_kind(exc, openai)
    if kind is OPENAI_INVALID:  # OpenAI's error object: `param` names the field, `code` is null
        return error_body(kind.type, exc.message, param=exc.details.get("field"), code=None, **exc.details)
    return error_body(kind.type, exc.message, **exc.details)


def is_openai(request: Request) -> bool:
    return request.url.path in OPENAI_PATHS


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")  # details such as `limit`, `field`, `errors`, `version`

    type: str
    message: str


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx answer."""

    error: ErrorDetail


def _documented(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# The error answers of the API, as published in the OpenAPI schema (attached per router in the app factory).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _documented(
        "the body is not valid JSON or not UTF-8; on the OpenAI routes, any request that cannot be taken "
        "(type invalid_request_error, as OpenAI answers)"
    ),
    401: _documented("API keys are on and the call has no valid one"),
    404: _documented("unknown model or session (or another key's session); an API not offered (type unsupported)"),
    409: _documented("a session at another version, of another model, or unreadable; a session file of other weights"),
    413: _documented("over a published size limit (named in the message)"),
    415: _documented("the body is not application/json (a session file to import: not application/octet-stream)"),
    422: _documented("a field is missing, of the wrong type or out of range"),
    429: _documented("the server is full (max_active_sequences, max_queued_requests)"),
    503: _documented("the session store (Redis) or the engine is unavailable"),
}
UNAUTHORIZED_RESPONSE: dict[int | str, dict[str, Any]] = {401: ERROR_RESPONSES[401]}


def error_response(status_code: int, error_type: str, message: str, **details: Any) -> JSONResponse:
    return JSONResponse(error_body(error_type, message, **details), status_code=status_code)


def install_error_handlers(app: FastAPI) -> None:
    """The one place where exceptions become HTTP responses."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        kind = error_kind(exc, is_openai(request))
        body = service_error_body(exc, is_openai(request))
        return JSONResponse(body, status_code=kind.status_code, headers=kind.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_describe(e) for e in exc.errors()]
        if any(e["type"] == "json_invalid" for e in errors):
            return error_response(400, "invalid_json", "request body is not valid JSON", errors=errors)
        if is_openai(request):
            return _openai_validation_error(errors)
        message = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors)
        return error_response(422, "invalid_request", message or "invalid request", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        response = error_response(exc.status_code, error_type, str(exc.detail))
        response.headers.update(exc.headers or {})
        allowed = _allowed_methods(request) if exc.status_code == 405 else []
        if allowed:  # every method of the path (Starlette names only those of the first route that matched)
            response.headers["Allow"] = ", ".join(allowed)
        return response

    app.add_middleware(UnexpectedErrorMiddleware)


def _openai_validation_error(errors: list[dict[str, Any]]) -> JSONResponse:
    """OpenAI's answer to a body it cannot take: 400, an unknown field "Unrecognized request argument"."""
    unknown = [e["field"] for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        message = f"Unrecognized request argument supplied: {', '.join(unknown)}"
    else:
        message = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors)
    field = errors[0]["field"] if errors else None
    return error_response(
        400, OPENAI_INVALID.type, message or "invalid request", param=field, code=None, field=field, errors=errors
    )


def _allowed_methods(request: Request) -> list[str]:
    """The methods the API publishes for this path (from the OpenAPI schema, which sees every router).

    As OpenAPI matches paths, a concrete path (`/v1/sessions/import`) wins over a templated one
    that also matches it (`/v1/sessions/{session_id}`).
    """
    paths: dict[str, dict[str, Any]] = request.app.openapi().get("paths", {})
    matching = [template for template in paths if compile_path(template)[0].match(request.url.path)]
    concrete = [template for template in matching if "{" not in template]
    methods: set[str] = set()
    for template in concrete or matching:
        methods |= {method.upper() for method in paths[template]}
    return sorted(methods | ({"HEAD"} if "GET" in methods else set()))


def _describe(error: Any) -> dict[str, Any]:
    """A JSON-safe summary of one pydantic error (its `input` may be anything, even bytes)."""
    location = [str(part) for part in error.get("loc", ()) if part != "body"]
    field = ".".join(location) or ("body" if tuple(error.get("loc", ())) == ("body",) else "")  # the body itself
    return {"field": field, "message": str(error.get("msg", "")), "type": str(error.get("type", ""))}


class UnexpectedErrorMiddleware:
    """A bug answers 500 `internal_error` (logged, no trace) and the connection stays usable.

    Starlette's own last-resort handler re-raises after answering, so the server closes
    the connection and a client's next request on it is reset; this one ends the request.
    A response already started (a stream) cannot turn into a 500: that one is re-raised.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started or scope["type"] != "http":
                raise
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await error_response(500, *INTERNAL_ERROR)(scope, receive, send)
