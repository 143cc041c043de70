"""The engine's public face: build a job, admit it, hand back what the caller awaits."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from typing import Any

import torch
from torch import Tensor

from app.engine.beam import BeamJob, BeamRun
from app.engine.constraint import CompiledConstraint, Constraint
from app.engine.job import Job
from app.engine.query import FeedJob, NextTokenJob
from app.engine.sampled import GenerateJob, Generation
from app.engine.scheduler import Scheduler
from app.engine.types import FeedResult, GenerationSettings, Hooks, NextTokenResult, SequenceState
from app.settings import Settings
from model.beam_search import BeamSettings
from model.checkpoint import Checkpoint


class Engine:
    """Batches the feeds, next-token queries, generations and beam searches of one model.

    Its limits are the server's Settings (max_active_sequences, max_queued_requests,
    prefill_tokens_per_step); every call that submits work raises EngineBusy when they
    are reached, before anything has started.
    """

    def __init__(self, checkpoint: Checkpoint, settings: Settings, hooks: Hooks | None = None) -> None:
        self.model = checkpoint.model
        self.tokenizer = checkpoint.tokenizer
        self.scheduler = Scheduler(checkpoint, settings, hooks or Hooks())
        self.device = self.scheduler.device

    def start(self) -> None:
        self.scheduler.start()

    def close(self) -> None:
        self.scheduler.close()

    @property
    def alive(self) -> bool:
        return self.scheduler.alive

    @property
    def refusing(self) -> bool:
        """Whether new work would be refused now (EngineBusy): /ready reports it."""
        return self.scheduler.refusing

    @property
    def active_generations(self) -> int:
        """Decode rows held by admitted jobs."""
        return self.scheduler.active_rows

    @property
    def idle(self) -> bool:
        """Nothing admitted is unanswered."""
        return self.scheduler.active_rows == 0 and self.scheduler.queued == 0

    def cancel(self, job: Job) -> None:
        self.scheduler.cancel(job)

    def fresh(self) -> SequenceState:
        """A new sequence at the start of a line: zero state, boundary token pending."""
        with torch.inference_mode():
            return SequenceState(self.model.init_state(1), self.tokenizer.boundary_id, history=())

    async def feed(
        self, start: SequenceState, ids: list[int], with_logprobs: bool = True, top_logprobs: int = 0, priority: int = 0
    ) -> FeedResult:
        """Log-probabilities of `ids` after `start` (and the top alternatives at each), and the state after them.

        `priority` (vLLM's: lower first) orders the feeding among the jobs waiting to be fed."""
        job, future = self._call(
            FeedJob, start, ids, with_logprobs=with_logprobs, top_logprobs=top_logprobs, priority=priority
        )
        await future
        return FeedResult(job.fed_logprobs, job.fed_end(), job.fed_top, job.cached)

    async def next_token(self, start: SequenceState, ids: list[int] | None = None) -> NextTokenResult:
        """Feed `ids`, then the distribution of the next token (V,)."""
        job, future = self._call(NextTokenJob, start, ids or [], with_logprobs=True)
        logprobs: Tensor = await future
        return NextTokenResult(logprobs, job.fed_end(), job.fed_logprobs)

    async def generate(
        self,
        start: SequenceState,
        settings: GenerationSettings,
        ids: list[int] | None = None,
        with_logprobs: bool = False,
        n: int = 1,
        top_logprobs: int = 0,
        priority: int = 0,
    ) -> Generation:
        """Feed `ids` (a prompt, logprobs and `top_logprobs` alternatives kept if asked) once, then sample n choices.

        A constraint is compiled first, off the event loop (ConstraintError), then the
        job is admitted (EngineBusy): both before anything has started. `priority` (lower
        first) orders the prompt's feeding, as `feed`'s does.
        """
        ids = list(ids or [])
        compiled = (
            None if settings.constraint is None else await self.compile_constraint(settings.constraint, start, ids)
        )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        job = GenerateJob(
            settings,
            n,
            compiled,
            start=start,
            ids=ids,
            loop=loop,
            receive=queue.put_nowait,
            with_logprobs=with_logprobs,
            top_logprobs=top_logprobs,
            priority=priority,
        )
        self.scheduler.admit(job)
        return Generation(self, job, queue)

    async def compile_constraint(
        self, constraint: Constraint, start: SequenceState, ids: list[int] | None = None
    ) -> CompiledConstraint:
        """`constraint` compiled for a text after `start` and `ids`, once, on a compile thread (never the event loop).

        Raises ConstraintError (422) when it is invalid, over a bound (its size, or its
        compile time: llguidance's fuel limits bound it) or cannot start with this
        vocabulary (or spell any option of a choice). The request waits; llguidance drops
        the GIL while it compiles, so other requests and streams do not.
        """
        pending = ids[-1] if ids else start.pending
        at_line_start = pending == self.tokenizer.boundary_id
        return await asyncio.wrap_future(self.scheduler.constraints.compile_later(constraint, at_line_start))

    async def beam(
        self,
        start: SequenceState,
        settings: BeamSettings,
        ids: list[int] | None = None,
        constraint: Constraint | None = None,
        priority: int = 0,
    ) -> BeamRun:
        """Feed `ids`, then beam-search (never choosing `<unk>` unless the settings allow it).

        Under a `constraint` (compiled first, off the event loop; ConstraintError when it
        cannot be used) the search ends a hypothesis at the constraint's end token, the
        line boundary, which it keeps as its last token (finish "eos"): the text is complete.
        """
        unk_id = self.tokenizer.unk_id
        if not settings.allow_unk and unk_id is not None and unk_id not in settings.banned:
            settings = dataclasses.replace(settings, banned=(*settings.banned, unk_id))
        ids = list(ids or [])
        compiled = None
        if constraint is not None:
            compiled = await self.compile_constraint(constraint, start, ids)
            settings = dataclasses.replace(settings, eos_id=self.tokenizer.boundary_id)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        job = BeamJob(
            settings,
            compiled,
            start=start,
            ids=ids,
            loop=future.get_loop(),
            receive=_settler(future),
            priority=priority,
        )
        self.scheduler.admit(job)
        return BeamRun(self, job, future)

    def _call(
        self, kind: type[Job], start: SequenceState, ids: list[int], **options: Any
    ) -> tuple[Job, asyncio.Future[Any]]:
        """Admit a job answered once (a feed, a next-token query); its future settles with the answer."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        job = kind(start=start, ids=list(ids), loop=future.get_loop(), receive=_settler(future), **options)
        self.scheduler.admit(job)
        return job, future


def _settler(future: asyncio.Future[Any]) -> functools.partial[None]:
    return functools.partial(_settle, future)


def _settle(future: asyncio.Future[Any], item: Any) -> None:
    if future.done():
        return
    if isinstance(item, BaseException):
        future.set_exception(item)
    else:
        future.set_result(item)
