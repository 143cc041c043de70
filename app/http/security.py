"""Optional API keys: `Authorization: Bearer KEY` or `X-API-Key: KEY`, checked in constant time.

With `RNNLM_API_KEYS` unset every call is open. With keys set, every route that depends
on `authenticate` needs one: the whole API, `/info` and `/metrics`. Open are only the
probes an orchestrator calls without credentials (`/health`, `/ready`) and the
playground page and its assets (static files; the API calls the page makes need a key
like any other). A missing or wrong key gets 401.

A key is never kept or compared as given: the server holds the SHA-256 digests of the
configured keys and compares the digest of the presented key with every one of them
using `hmac.compare_digest`, so neither the time taken nor the length of a key says
which bytes matched. The digest is also the caller's identity: a session stores its
creator's digest, and a call with another key (or none) finds no such session.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="an API key from RNNLM_API_KEYS")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key from RNNLM_API_KEYS")


def key_digest(key: str) -> str:
    """The identity a key stands for: the hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKeys:
    """The digests of the configured keys (none: keys are off)."""

    digests: tuple[str, ...] = ()

    @classmethod
    def parse(cls, setting: str | None) -> ApiKeys:
        """From `RNNLM_API_KEYS`: comma-separated, blanks around a key and empty entries ignored."""
        keys = [key.strip() for key in (setting or "").split(",")]
        return cls(tuple(key_digest(key) for key in keys if key))

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def identify(self, key: str) -> str | None:
        """The key's digest when it is one of ours, else None; the same work whichever key matches."""
        digest = key_digest(key).encode("ascii")
        found = False
        for known in self.digests:  # no early exit: every key is compared every time
            found |= hmac.compare_digest(digest, known.encode("ascii"))
        return digest.decode("ascii") if found else None


def authenticate(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_api_key_header)],
) -> str | None:
    """The caller's identity (its key's digest), None when keys are off; else 401."""
    keys: ApiKeys = request.app.state.api_keys
    if not keys.enabled:
        return None
    presented = bearer.credentials if bearer is not None else header_key
    if not presented:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
    identity = keys.identify(presented)
    if identity is None:
        raise Unauthorized("the API key is not valid")
    return identity


CallerDep = Annotated[str | None, Depends(authenticate)]
