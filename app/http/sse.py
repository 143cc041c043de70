"""The one writer of streamed answers: an admitted generation as Server-Sent Events.

The writer owns what every stream shares: error events (the status line is gone once a
stream is open, so an error is an event carrying the body a JSON answer would have),
cancelling the generation when the client leaves, and the closing events. Each surface
only renders its own events (a `StreamRenderer`, app/api/render.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from app.api.render import Choice, Event, Running, StreamRenderer
from app.engine import TokenEvent
from app.errors import ServiceError
from app.http.errors import INTERNAL_ERROR, error_body, service_error_body

logger = logging.getLogger("app")


async def stream_events(generation: Running, renderer: StreamRenderer) -> AsyncIterator[Event]:
    """The Server-Sent Events of an admitted generation; leaving early (a client gone) cancels it."""
    events: list[list[TokenEvent]] = [[] for _ in range(generation.n)]
    async with generation:
        try:
            async for event in generation:
                events[event.choice].append(event)
                rendered = renderer.token(event)
                if rendered is not None:
                    yield rendered
            results = generation.results
            choices = [Choice(e, r) for e, r in zip(events, results, strict=True) if r is not None]
            for closing in await renderer.finish(choices):
                yield closing
        except ServiceError as exc:
            yield renderer.error(service_error_body(exc))
        except Exception:  # a bug: say so without a trace, and end the stream cleanly
            logger.exception("stream failed")
            yield renderer.error(error_body(*INTERNAL_ERROR))


def event_source(generation: Running, renderer: StreamRenderer) -> EventSourceResponse:
    """The streamed answer; a client gone before the first event also cancels (the background task)."""
    return EventSourceResponse(stream_events(generation, renderer), background=BackgroundTask(generation.cancel))
