"""How every generating surface answers: one collector for whole responses, one renderer type for streams.

A surface (native generate, session generate, OpenAI completions) builds a plan, admits
it to the engine (`Engine.generate`, which raises EngineBusy before any response
starts), and either collects the `Generation` here or hands it, with a `StreamRenderer`
that turns engine events into its own wire format, to the one SSE writer (app/http/sse.py,
the HTTP side).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from app.engine import Generation, GenerationResult, TokenEvent

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

    def error(self, body: dict[str, Any]) -> Event:
        """An error event carrying `body` (a JSON error's): the stream is open, so no status code can say it."""
