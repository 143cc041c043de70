"""/v1/chat/completions, any method: refused with a pointer to /v1/completions.

These are plain language models without a chat template, so there is no chat API to
offer; a client that tries one learns where to go instead. Out of the OpenAPI schema:
it is not an operation of the API.
"""

from __future__ import annotations

from fastapi import APIRouter

from app.errors import Unsupported

router = APIRouter(prefix="/v1", tags=["chat"], include_in_schema=False)

CHAT_REFUSED = (
    "chat completions are not offered: these are plain language models without a chat template "
    "(no roles, no messages). Send the text to continue as `prompt` to POST /v1/completions instead."
)


@router.api_route("/chat/completions", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
def chat_completions() -> None:
    raise Unsupported(CHAT_REFUSED, use="/v1/completions")
