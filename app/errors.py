"""Domain errors: plain exceptions a client can cause or see; app/http_errors.py maps them to HTTP once."""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    """Base of the errors a client can cause or see; subclasses set status and type."""

    status_code = 400
    error_type = "bad_request"
    headers: ClassVar[dict[str, str]] = {}  # sent with the response (e.g. WWW-Authenticate with a 401)

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(ServiceError):
    status_code = 422
    error_type = "invalid_request"


class LimitExceeded(ServiceError):
    """A size over a published limit; `limit` names the setting."""

    status_code = 413
    error_type = "limit_exceeded"


class NotFound(ServiceError):
    status_code = 404
    error_type = "not_found"


class Unsupported(ServiceError):
    """An API this service does not offer (e.g. chat completions); the message says what to call instead.

    404 rather than 400 (nothing is wrong with the request) or 501 (OpenAI clients retry a 5xx).
    """

    status_code = 404
    error_type = "unsupported"


class Unavailable(ServiceError):
    status_code = 503
    error_type = "unavailable"


class ClientGone(ServiceError):
    """The client hung up before its answer was ready (nginx's 499); nobody receives it, /metrics counts it."""

    status_code = 499
    error_type = "client_closed_request"
