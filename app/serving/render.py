"""How every generating surface answers: one collector for whole responses, one SSE writer for streams.

A surface (native generate, session generate, OpenAI completions) builds a plan, admits
it to the engine (`Engine.generate`, which raises EngineBusy before any response
starts) and hands the `Generation` here with a `StreamRenderer` that turns engine
events into its own wire format. The writer owns what every stream shares: error
events (the status line is gone once a stream is open), cancelling the generation when
the client leaves, and the closing events with usage.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from app.engine import EngineClosed, Generation, GenerationResult, TokenEvent
from app.errors import ServiceError
from app.session_store import StoreUnavailable

logger = logging.getLogger("app")

Event = dict[str, Any]  # one Server-Sent Event: {"event"?: name, "data": text}


@dataclass(frozen=True)
class Choice:
    """One finished choice of a generation: its events in order and the engine's result."""

    events: list[TokenEvent]
    result: GenerationResult

    @property
    def text(self) -> str:
        return "".join(event.text for event in self.events)


async def collect(generation: Generation) -> list[Choice]:
    """Run a generation to its end; the choices in order (cancelled if the caller is)."""
    events: list[list[TokenEvent]] = [[] for _ in range(generation.n)]
    async with generation:
        async for event in generation:
            events[event.choice].append(event)
    results = generation.results
    return [Choice(choice_events, result) for choice_events, result in zip(events, results, strict=True) if result]


class StreamRenderer(Protocol):
    """A surface's wire format for a stream."""

    def token(self, event: TokenEvent) -> Event | None:
        """The event for one generated token (None: nothing to send)."""

    async def finish(self, choices: list[Choice]) -> list[Event]:
        """The closing events once every choice has ended (may save state, and raise ServiceError)."""

    def error(self, error_type: str, message: str) -> Event:
        """An error event: the stream is open, so no status code can say it any more."""


async def stream_events(generation: Generation, renderer: StreamRenderer) -> AsyncIterator[Event]:
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
            yield renderer.error(exc.error_type, exc.message)
        except (EngineClosed, StoreUnavailable) as exc:
            yield renderer.error("unavailable", str(exc))
        except Exception:  # a bug: say so without a trace, and end the stream cleanly
            logger.exception("stream failed")
            yield renderer.error("internal_error", "internal server error")


def event_source(generation: Generation, renderer: StreamRenderer) -> EventSourceResponse:
    """The streamed answer; a client gone before the first event also cancels (the background task)."""
    return EventSourceResponse(stream_events(generation, renderer), background=BackgroundTask(generation.cancel))
