"""Stop work whose answer nobody will read: a client that hangs up before a whole response."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request

from app.errors import ClientGone

T = TypeVar("T")


async def unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await `work`; if the client disconnects first, cancel it (its cleanup runs) and raise ClientGone.

    Streams stop on their own when a send fails; a whole (non-streamed) generation or
    beam search would otherwise run to `max_tokens` for nobody.
    """
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # let its `finally` blocks free what it held
    if task.cancelled():
        raise ClientGone("the client closed the connection before the answer was ready")
    return task.result()


async def _disconnect(request: Request) -> None:
    """Return when the ASGI server reports the client gone (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
