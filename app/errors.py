"""Domain errors: every error a client can cause or see, as plain exceptions.

Nothing here knows HTTP: app/http/errors.py maps each class to a status and an error
type, once, for JSON answers and stream error events alike. Errors that never leave
the module that raises them (a store's version conflict, an unreadable session record,
a bad checkpoint) stay with that module; its caller turns them into one of these.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of the errors a client can cause or see; `details` join the message in the answer."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(ServiceError):
    """A field that is well-formed but cannot be honoured; `field` or `conflicts` name it."""


class ConstraintError(InvalidRequest):
    """A constraint (regex, choice, JSON schema, grammar) that cannot be used: invalid, over a bound, or not
    startable with the model's vocabulary; `field` names the request field it came from."""


class LimitExceeded(ServiceError):
    """A size over a published limit; `limit` names the setting."""


class NotFound(ServiceError):
    """An unknown model or session (another key's session included)."""


class Unsupported(ServiceError):
    """An API this service does not offer (e.g. chat completions); the message says what to call instead."""


class SessionConflict(ServiceError):
    """The session cannot do this now: stale version, another model, or a model that is gone."""


class Unauthorized(ServiceError):
    """API keys are on and the call has no valid one."""


class EngineBusy(ServiceError):
    """The engine has no room for another job right now: retry soon."""


class Unavailable(ServiceError):
    """Something the call needs is not there: models not loaded yet, the engine or the store gone."""


class EngineClosed(Unavailable):
    """The engine has shut down."""


class StoreUnavailable(Unavailable):
    """The session store's server cannot be reached or refused the command."""


class ClientGone(ServiceError):
    """The client hung up before its answer was ready; nobody receives it, /metrics counts it."""
