"""How every generating surface answers: one collector for whole responses, one renderer type for streams.

A surface (native generate, session generate, OpenAI completions) builds a plan, admits
it to the engine (`Engine.generate`, which raises EngineBusy before any response
starts), and either collects the `Generation` here or hands it, with a `StreamRenderer`
that turns engine events into its own wire format, to the one SSE writer (app/http/sse.py,
the HTTP side).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
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


class Running(Protocol):
    """What a stream writer reads: a Generation, or several interleaved as one."""

    @property
    def n(self) -> int: ...

    @property
    def results(self) -> list[GenerationResult | None]: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def __aiter__(self) -> AsyncIterator[TokenEvent]: ...

    def cancel(self) -> None: ...


class Interleaved:
    """Several admitted generations as one: their events as they come, choices numbered on (generation i's
    choice c is `offsets[i] + c`), ended when all have ended, cancelled together."""

    def __init__(self, generations: list[Generation]) -> None:
        self.generations = generations
        self.offsets = [sum(g.n for g in generations[:i]) for i in range(len(generations))]
        self.n = sum(g.n for g in generations)

    @property
    def results(self) -> list[GenerationResult | None]:
        return [
            None if result is None else dataclasses.replace(result, choice=offset + result.choice)
            for generation, offset in zip(self.generations, self.offsets, strict=True)
            for result in generation.results
        ]

    async def __aenter__(self) -> Interleaved:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[TokenEvent]:
        queue: asyncio.Queue[tuple[int, TokenEvent | Exception | None]] = asyncio.Queue()

        async def pump(index: int, generation: Generation) -> None:
            try:
                async for event in generation:
                    queue.put_nowait((index, event))
                queue.put_nowait((index, None))
            except Exception as exc:  # the engine's error reaches the writer, which renders it
                queue.put_nowait((index, exc))

        tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(self.generations)]
        try:
            running = len(tasks)
            while running:
                index, item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield dataclasses.replace(item, choice=self.offsets[index] + item.choice)
        finally:
            for task in tasks:
                task.cancel()
            self.cancel()

    def cancel(self) -> None:
        for generation in self.generations:
            generation.cancel()
