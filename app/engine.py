"""One batching scheduler per model; model work runs on its own worker thread.

Every operation starts from a single-row `SequenceState` (a recurrent state plus the
*pending* token, see model/inference.py) and hands back the final `SequenceState`, so
a caller can keep a sequence anywhere (in memory, in Redis) and continue it later:

    start = engine.fresh()                                   # start of a line
    fed = await engine.feed(start, ids)                      # logprobs of ids, state after them
    dist = await engine.next_token(fed.end)                  # log p(next | everything so far), (V,)
    async with engine.generate(fed.end, settings) as gen:    # sample; iterate TokenEvents
        async for event in gen: ...
    gen.result.end                                           # state after the generated tokens

`generate` and `next_token` may also feed `ids` first (a prompt) in the same job, which
saves a round trip through the scheduler.

Each tick the worker (1) feeds a bounded number of prompt/text tokens of the queued
jobs in one padded, packed forward (`feed_tokens`), then (2) advances every active
sequence and every next-token query by one token in a single batched forward
(`advance` over `cat_states` of the rows) and samples each generating row with its own
settings and `torch.Generator`. Results go back to the event loop with
`loop.call_soon_threadsafe`. A generation whose consumer goes away is cancelled and
leaves the batch at the next tick.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import torch
from torch import Tensor

from app.stop_strings import StopStringMatcher
from model.checkpoint import Checkpoint
from model.inference import SamplingParams, advance, feed_tokens, make_generator, model_device, sample_next
from model.network import State, cat_states, split_state

FinishReason = Literal["length", "stop", "eos"]

logger = logging.getLogger("app")


class EngineBusy(Exception):
    """The engine has no room for another job right now (maps to 429)."""


class EngineClosed(Exception):
    """The engine has shut down (maps to 503)."""


@dataclass(frozen=True)
class SequenceState:
    """One sequence: a single-row state (each tensor (layers, 1, hidden)) and its pending token."""

    state: State
    pending: int


@dataclass(frozen=True)
class FeedResult:
    logprobs: list[float]  # log p(ids[i] | start, ids[:i]), natural log
    end: SequenceState


@dataclass(frozen=True)
class NextTokenResult:
    logprobs: Tensor  # (V,) raw model log-probabilities of the next token, float32 on CPU
    end: SequenceState  # the start after the fed ids; the next token itself is not consumed
    fed_logprobs: list[float]


@dataclass(frozen=True)
class GenerationSettings:
    """How one sequence is sampled; `history` primes the repetition penalty (usually the prompt)."""

    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    eos_id: int | None = None  # finish with "eos" when this token is sampled
    top_logprobs: int = 0
    history: tuple[int, ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """One generated token: `text` is what it releases (held back while it could start a stop string)."""

    token_id: int
    piece: str
    text: str
    logprob: float
    top: list[tuple[int, float]]


@dataclass(frozen=True)
class GenerationResult:
    finish_reason: FinishReason
    end: SequenceState  # state after every generated token, the last one pending
    token_ids: list[int]
    fed_logprobs: list[float]  # logprobs of the ids fed before generating (the prompt)


@dataclass(eq=False)
class _Job:
    """Work for the scheduler; touched only by the worker thread after submission."""

    kind: Literal["feed", "next_token", "generate"]
    state: State
    pending: int
    ids: list[int]
    with_logprobs: bool
    deliver: Callable[[Any], object]  # thread-safe: hands an item to the waiting coroutine
    settings: GenerationSettings | None = None
    fed: int = 0
    fed_logprobs: list[float] = field(default_factory=list)
    generator: torch.Generator | None = None
    history: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    matcher: StopStringMatcher | None = None
    cancelled: bool = False
    finished: bool = False  # left the engine (counted out once)


class Generation:
    """The event-loop side of a generation: an async iterator of TokenEvents; `result` at the end."""

    def __init__(self, engine: Engine, job: _Job, queue: asyncio.Queue[Any]) -> None:
        self._engine = engine
        self._job = job
        self._queue = queue
        self.result: GenerationResult | None = None

    async def __aenter__(self) -> Generation:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[TokenEvent]:
        try:
            while self.result is None:
                item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, GenerationResult):
                    self.result = item
                else:
                    yield item
        finally:
            self.cancel()

    async def collect(self) -> tuple[list[TokenEvent], GenerationResult]:
        events = [event async for event in self]
        assert self.result is not None
        return events, self.result

    def cancel(self) -> None:
        """Stop generating (no-op once finished); the row leaves the batch at the next tick."""
        if self.result is None and not self._job.cancelled:
            self._engine._cancel(self._job)


class Engine:
    """Batches the feeds, next-token queries and generations of one model."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        max_active: int = 64,
        max_queued: int = 1024,
        prefill_tokens_per_step: int = 2048,
        on_step: Callable[[int], None] | None = None,
        on_active: Callable[[int], None] | None = None,
        on_tokens: Callable[[int], None] | None = None,
    ) -> None:
        self.model = checkpoint.model
        self.tokenizer = checkpoint.tokenizer
        self.device = model_device(self.model)
        self.max_active = max_active
        self.max_queued = max_queued
        self.prefill_tokens_per_step = prefill_tokens_per_step
        self._on_step = on_step or (lambda n: None)  # batch size of each decoding step
        self._on_active = on_active or (lambda n: None)  # generations in the engine
        self._on_tokens = on_tokens or (lambda n: None)  # tokens generated
        self._lock = threading.Condition()
        self._inbox: deque[_Job] = deque()
        self._prefilling: deque[_Job] = deque()
        self._decoding: list[_Job] = []
        self._generations = 0  # admitted generations not yet finished (guarded by _lock)
        self._queued = 0  # admitted feeds / next-token queries not yet answered (guarded by _lock)
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="rnnlm-engine", daemon=True)

    # ---- the event-loop side ------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closing

    @property
    def active_generations(self) -> int:
        with self._lock:
            return self._generations

    def fresh(self) -> SequenceState:
        """A new sequence at the start of a line: zero state, boundary token pending."""
        with torch.inference_mode():
            return SequenceState(self.model.init_state(1), self.tokenizer.boundary_id)

    async def feed(self, start: SequenceState, ids: list[int], with_logprobs: bool = True) -> FeedResult:
        job, future = self._submit_call("feed", start, ids, with_logprobs)
        await future
        return FeedResult(job.fed_logprobs, SequenceState(job.state, job.pending))

    async def next_token(self, start: SequenceState, ids: list[int] | None = None) -> NextTokenResult:
        job, future = self._submit_call("next_token", start, ids or [], with_logprobs=True)
        logprobs: Tensor = await future
        return NextTokenResult(logprobs, SequenceState(job.state, job.pending), job.fed_logprobs)

    def generate(
        self,
        start: SequenceState,
        settings: GenerationSettings,
        ids: list[int] | None = None,
        with_logprobs: bool = False,
    ) -> Generation:
        """Feed `ids` (a prompt, logprobs kept if asked), then sample; raises EngineBusy when full."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        job = _Job(
            kind="generate",
            state=start.state,
            pending=start.pending,
            ids=list(ids or []),
            with_logprobs=with_logprobs,
            deliver=lambda item: loop.call_soon_threadsafe(queue.put_nowait, item),
            settings=settings,
            generator=make_generator(settings.seed),
            history=list(settings.history),
            matcher=StopStringMatcher(settings.stop),
        )
        with self._lock:
            self._check_open()
            if self._generations >= self.max_active:
                raise EngineBusy(
                    f"{self._generations} sequences are generating (max_active_sequences={self.max_active})"
                )
            self._generations += 1
            self._on_active(self._generations)
            self._inbox.append(job)
            self._lock.notify()
        return Generation(self, job, queue)

    def _submit_call(
        self, kind: Literal["feed", "next_token"], start: SequenceState, ids: list[int], with_logprobs: bool
    ) -> tuple[_Job, asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def settle(item: Any) -> None:
            if future.done():
                return
            if isinstance(item, BaseException):
                future.set_exception(item)
            else:
                future.set_result(item)

        job = _Job(
            kind=kind,
            state=start.state,
            pending=start.pending,
            ids=list(ids),
            with_logprobs=with_logprobs,
            deliver=lambda item: loop.call_soon_threadsafe(settle, item),
        )
        with self._lock:
            self._check_open()
            if self._queued >= self.max_queued:
                raise EngineBusy(f"{self._queued} requests are queued (max_queued_requests={self.max_queued})")
            self._queued += 1
            self._inbox.append(job)
            self._lock.notify()
        return job, future

    def _check_open(self) -> None:
        if self._closing:
            raise EngineClosed("the engine is shutting down")

    def _cancel(self, job: _Job) -> None:
        with self._lock:
            job.cancelled = True
            self._lock.notify()

    # ---- the worker thread --------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (self._inbox or self._prefilling or self._decoding or self._closing):
                        self._lock.wait()
                    if self._closing:
                        break
                    self._prefilling.extend(self._inbox)
                    self._inbox.clear()
                try:
                    self._drop_cancelled()
                    self._prefill_step()
                    self._decode_step()
                except Exception as exc:  # a bug must fail the jobs in hand, never kill the worker
                    logger.exception("engine tick failed")
                    jobs = [*self._prefilling, *self._decoding]
                    self._prefilling.clear()
                    self._decoding = []
                    self._fail(jobs, exc)
        for job in [*self._inbox, *self._prefilling, *self._decoding]:
            job.deliver(EngineClosed("the engine is shutting down"))

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._prefilling if j.cancelled]:
            self._prefilling.remove(job)
            self._finished(job)
        for job in [j for j in self._decoding if j.cancelled]:
            self._decoding.remove(job)
            self._finished(job)

    def _finished(self, job: _Job) -> None:
        with self._lock:
            if job.finished:
                return
            job.finished = True
            if job.kind == "generate":
                self._generations -= 1
                self._on_active(self._generations)
            else:
                self._queued -= 1

    def _fail(self, jobs: list[_Job], exc: Exception) -> None:
        for job in jobs:
            self._finished(job)  # counted out before the caller hears, so it can come straight back
            job.deliver(exc)

    def _prefill_step(self) -> None:
        """Feed up to `prefill_tokens_per_step` queued tokens (chunked across ticks) in one forward."""
        budget = self.prefill_tokens_per_step
        batch: list[tuple[_Job, list[int]]] = []
        for job in self._prefilling:
            if budget <= 0:
                break
            chunk = job.ids[job.fed : job.fed + budget]
            budget -= max(len(chunk), 1)
            batch.append((job, chunk))
        if not batch:
            return
        jobs = [job for job, _ in batch]
        try:
            logprobs, state, pending = feed_tokens(
                self.model,
                cat_states([job.state for job in jobs]),
                [job.pending for job in jobs],
                [chunk for _, chunk in batch],
                with_logprobs=any(job.with_logprobs for job in jobs),
            )
        except Exception as exc:  # a failed forward fails its jobs, not the engine
            for job in jobs:
                self._prefilling.remove(job)
            self._fail(jobs, exc)
            return
        for (job, chunk), row_state, row_pending, row_logprobs in zip(
            batch, split_state(state), pending, logprobs, strict=True
        ):
            job.state, job.pending = row_state, row_pending
            job.fed += len(chunk)
            if job.with_logprobs:
                job.fed_logprobs.extend(row_logprobs.tolist())
            if job.fed < len(job.ids):
                continue
            self._prefilling.remove(job)
            if job.kind == "feed":
                self._finished(job)
                job.deliver(None)
            elif job.settings is not None and job.settings.max_tokens <= 0:  # echo-only scoring
                self._finished(job)
                job.deliver(GenerationResult("length", SequenceState(job.state, job.pending), [], job.fed_logprobs))
            else:
                self._decoding.append(job)

    def _decode_step(self) -> None:
        """Advance every decoding row by one token in one forward; sample or answer each."""
        jobs = self._decoding
        if not jobs:
            return
        self._on_step(len(jobs))
        try:
            pending = torch.tensor([job.pending for job in jobs], device=self.device)
            logits, state = advance(self.model, pending, cat_states([job.state for job in jobs]))  # (B, V)
            generating = [row for row, job in enumerate(jobs) if job.kind == "generate"]
            sampled: list[int] = []
            if generating:
                gen_jobs = [jobs[row] for row in generating]
                sampled, gen_logprobs = sample_next(
                    logits[generating],
                    [job.settings.sampling for job in gen_jobs if job.settings is not None],
                    [job.generator for job in gen_jobs if job.generator is not None],
                    [job.history for job in gen_jobs],
                )
            logits = logits.float().cpu()
        except Exception as exc:
            self._decoding = []
            self._fail(jobs, exc)
            return
        rows = split_state(state) if generating else []
        still: list[_Job] = []
        for row, job in enumerate(jobs):
            if job.kind == "next_token":
                self._finished(job)
                job.deliver(torch.log_softmax(logits[row], dim=-1))
        for index, row in enumerate(generating):
            job = jobs[row]
            if self._emit(job, sampled[index], gen_logprobs[index], rows[row]):
                still.append(job)
        self._on_tokens(len(generating))
        self._decoding = still

    def _emit(self, job: _Job, token_id: int, logprobs: Tensor, row_state: State) -> bool:
        """Hand one sampled token to its request; return whether the sequence goes on."""
        settings, matcher = job.settings, job.matcher
        assert settings is not None and matcher is not None
        previous, job.state, job.pending = job.pending, row_state, token_id
        job.generated.append(token_id)
        job.history.append(token_id)
        piece = self.tokenizer.piece(token_id, previous)
        finish: FinishReason | None = None
        if token_id == settings.eos_id:
            text, finish = matcher.flush(), "eos"  # the boundary token ends the text; its "\n" is not shown
        else:
            text = matcher.push(piece)
            if matcher.stopped:
                finish = "stop"
            elif len(job.generated) >= settings.max_tokens:
                text, finish = text + matcher.flush(), "length"
        top: list[tuple[int, float]] = []
        if settings.top_logprobs:
            values, ids = torch.topk(logprobs, min(settings.top_logprobs, logprobs.numel()))
            top = [(int(i), _finite(float(v))) for v, i in zip(values, ids, strict=True)]
        job.deliver(TokenEvent(token_id, piece, text, _finite(float(logprobs[token_id])), top))
        if finish is None:
            return True
        end = SequenceState(job.state, job.pending)
        self._finished(job)
        job.deliver(GenerationResult(finish, end, list(job.generated), job.fed_logprobs))
        return False


def _finite(value: float) -> float:
    """JSON has no -inf: a token of probability 0 gets the most negative float instead."""
    return value if math.isfinite(value) else -1e30
