"""Request guard: body size capped before parsing, JSON bodies (valid UTF-8) but for the file uploads named here."""

from __future__ import annotations

from app.http.errors import error_response
from app.metrics import ASGIApp, Message, Receive, Scope, Send

# The routes whose body is a file, not JSON, and the one media type each takes.
FILE_BODIES = {"/v1/sessions/import": "application/octet-stream"}


class _Rejected(Exception):
    def __init__(self, status_code: int, error_type: str, message: str) -> None:
        self.status_code, self.error_type, self.message = status_code, error_type, message


class RequestGuardMiddleware:
    """Reads a request body (at most `max_body_bytes`), checks it, then replays it to the app.

    The limit holds before any parsing: a declared Content-Length over it is refused at
    once, and a chunked body is refused as soon as the bytes read pass it.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read_body(scope, receive)
        except _Rejected as rejected:
            response = error_response(rejected.status_code, rejected.error_type, rejected.message)
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as streams expect

        await self.app(scope, replay, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body:
            media_type = headers.get("content-type", "").split(";")[0].strip().lower()
            file_type = FILE_BODIES.get(scope["path"])
            if file_type is not None:
                if media_type != file_type:
                    raise _Rejected(
                        415,
                        "unsupported_media_type",
                        f"send the file with Content-Type: {file_type} (got {media_type!r})",
                    )
                return body
            if media_type != "application/json":
                raise _Rejected(
                    415, "unsupported_media_type", f"send JSON with Content-Type: application/json (got {media_type!r})"
                )
            try:
                body.decode("utf-8")  # the JSON itself is parsed (and refused with a 400) by FastAPI
            except UnicodeDecodeError as exc:
                raise _Rejected(400, "invalid_utf8", f"request body is not valid UTF-8 (byte {exc.start})") from exc
        return body

    def _too_large(self) -> _Rejected:
        return _Rejected(
            413, "limit_exceeded", f"request body is larger than max_body_bytes={self.max_body_bytes} bytes"
        )
