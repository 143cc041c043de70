"""One batching scheduler per model: every decode of the service runs here, on its own worker thread.

Every operation starts from a single-row `SequenceState` (a recurrent state plus the
*pending* token, see model/inference.py) and hands back final `SequenceState`s, so a
caller can keep a sequence anywhere (in memory, in Redis) and continue it later:

    start = engine.fresh()                                   # start of a line
    fed = await engine.feed(start, ids)                      # logprobs of ids, state after them
    dist = await engine.next_token(fed.end)                  # log p(next | everything so far), (V,)
    async with engine.generate(fed.end, settings, n=2) as gen:   # sample 2 choices; TokenEvents
        async for event in gen: ...
    gen.results[0].end                                       # choice 0's state after its tokens
    found = await engine.beam(fed.end, beam_settings)        # beam search (also the fill's spans)

`generate`, `beam` and `next_token` may feed `ids` first (a prompt) in the same job. A
generation of n choices feeds its prompt once and forks the state into n rows.

Each tick the worker (1) feeds a bounded number of queued prompt/text tokens in one
padded, packed forward (`feed_tokens`), then (2) advances every decoding row (sampled
rows, beam rows, next-token queries) by one token in one batched forward over the slot
pool (app/state_pool.py), samples all sampled rows in one batched sampler
(model/sampling.py) and steps each beam search; only sampled ids, the asked-for
log-probabilities and next-token rows leave the device. Results go back to the event
loop with `loop.call_soon_threadsafe`. Admission (`EngineBusy`) happens when a job is
submitted, before any response starts. A job whose consumer goes away is cancelled and
leaves the batch at the next tick.
"""

from __future__ import annotations

import asyncio
import functools
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

from app.state_pool import Slotted, StatePool
from app.stop_strings import StopStringMatcher
from model.beam_search import BeamSearch, BeamSettings, Hypothesis
from model.checkpoint import Checkpoint
from model.inference import advance, feed_tokens_with_top, model_device
from model.network import State, cat_states, split_state, state_tensors
from model.sampling import SamplerInputs, SamplingParams, random_seed, sample

FinishReason = Literal["length", "stop", "eos"]

logger = logging.getLogger("app")


class EngineBusy(Exception):
    """The engine has no room for another job right now (maps to 429 with Retry-After)."""


class EngineClosed(Exception):
    """The engine has shut down (maps to 503)."""


@dataclass(frozen=True)
class SequenceState:
    """One sequence: a single-row state (each tensor (layers, 1, hidden)) and its pending token."""

    state: State
    pending: int


Top = list[tuple[int, float]]  # (token id, log-probability), most likely first


@dataclass(frozen=True)
class FeedResult:
    logprobs: list[float]  # log p(ids[i] | start, ids[:i]), natural log
    end: SequenceState
    top: list[Top] = field(default_factory=list)  # at each fed position, when asked for


@dataclass(frozen=True)
class NextTokenResult:
    logprobs: Tensor  # (V,) raw model log-probabilities of the next token, float32 on CPU
    end: SequenceState  # the start after the fed ids; the next token itself is not consumed
    fed_logprobs: list[float]


@dataclass(frozen=True)
class GenerationSettings:
    """How one sequence is sampled; `history` primes the repetition penalty (usually the prompt).

    Choice i of a request for n draws from seed + i, so it equals a request of its own
    with that seed. `min_tokens` bans `eos_id` until that many tokens are out.
    """

    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    eos_id: int | None = None  # finish with "eos" when this token is sampled
    top_logprobs: int = 0
    history: tuple[int, ...] = ()
    min_tokens: int = 0


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of choice `choice`: `text` is what it releases (held back while it could start a stop string)."""

    token_id: int
    piece: str
    text: str
    logprob: float
    top: list[tuple[int, float]]
    choice: int = 0


@dataclass(frozen=True)
class GenerationResult:
    finish_reason: FinishReason
    end: SequenceState  # state after every generated token, the last one pending
    token_ids: list[int]
    fed_logprobs: list[float]  # logprobs of the ids fed before generating (the prompt)
    choice: int = 0
    fed_top: list[Top] = field(default_factory=list)  # the most likely tokens at each fed position, if asked


# ---- jobs: what the worker holds; each kind its own type --------------------------------


@dataclass(eq=False)
class _Job:
    """A submitted piece of work; touched only by the worker thread after submission."""

    state: State
    pending: int
    ids: list[int]
    with_logprobs: bool
    loop: asyncio.AbstractEventLoop  # where the caller waits
    receive: Callable[[Any], object]  # takes an item on that loop (never called from the worker)
    admitted: int  # what it counts against its limit
    fed: int = 0
    fed_logprobs: list[float] = field(default_factory=list)
    top_logprobs: int = 0  # alternatives wanted at each fed position
    fed_top: list[Top] = field(default_factory=list)
    cancelled: bool = False
    finished: bool = False  # left the engine (counted out once)
    rows: list[_Row] = field(default_factory=list)


@dataclass(eq=False)
class _FeedJob(_Job):
    pass


@dataclass(eq=False)
class _NextTokenJob(_Job):
    pass


@dataclass(eq=False)
class _GenerateJob(_Job):
    settings: GenerationSettings = field(default_factory=lambda: GenerationSettings(max_tokens=0))
    n: int = 1
    open_choices: int = 0


@dataclass(eq=False)
class _BeamJob(_Job):
    search: BeamSearch | None = None


class _Row(Slotted):
    """A row of the decode batch, owned by a job."""

    def __init__(self, job: _Job) -> None:
        self.job = job


class _SampledRow(_Row):
    def __init__(self, job: _GenerateJob, choice: int, seed: int, history: list[int]) -> None:
        super().__init__(job)
        self.settings = job.settings
        self.choice = choice
        self.seed = seed
        self.generated: list[int] = []
        self.matcher = StopStringMatcher(job.settings.stop)
        self.uses_history = job.settings.sampling.uses_history
        self.previous = job.pending  # the token before the next one (for its text piece)


class Generation:
    """The event-loop side of a generation: an async iterator of TokenEvents; `results` at the end."""

    def __init__(self, engine: Engine, job: _GenerateJob, queue: asyncio.Queue[Any]) -> None:
        self._engine = engine
        self._job = job
        self._queue = queue
        self.n = job.n
        self.results: list[GenerationResult | None] = [None] * job.n
        self.done = False

    @property
    def result(self) -> GenerationResult | None:
        """Choice 0's result (the only one unless n > 1)."""
        return self.results[0]

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
            while not self.done:
                item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, GenerationResult):
                    self.results[item.choice] = item
                    self.done = all(r is not None for r in self.results)
                else:
                    yield item
        finally:
            self.cancel()

    async def collect(self) -> tuple[list[TokenEvent], GenerationResult]:
        """Choice 0's events and result (for n == 1)."""
        events = [event async for event in self]
        assert self.results[0] is not None
        return events, self.results[0]

    def cancel(self) -> None:
        """Stop generating (no-op once finished); the rows leave the batch at the next tick."""
        if not self.done and not self._job.cancelled:
            self._engine._cancel(self._job)


class BeamRun:
    """The event-loop side of a beam search: await `hypotheses()`; `cancel()` stops it."""

    def __init__(self, engine: Engine, job: _BeamJob, future: asyncio.Future[Any]) -> None:
        self._engine = engine
        self._job = job
        self._future = future

    async def hypotheses(self) -> list[Hypothesis]:
        try:
            result: list[Hypothesis] = await self._future
            return result
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop searching (no-op once answered); the rows leave the batch at the next tick."""
        if not self._job.cancelled and not self._job.finished:
            self._engine._cancel(self._job)


class Engine:
    """Batches the feeds, next-token queries, generations and beam searches of one model."""

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
        self._on_active = on_active or (lambda n: None)  # sequences admitted to decode
        self._on_tokens = on_tokens or (lambda n: None)  # tokens generated
        self._lock = threading.Condition()
        self._inbox: deque[_Job] = deque()
        self._prefilling: deque[_Job] = deque()
        with torch.inference_mode():
            self._pool: StatePool[_Row] = StatePool(self.model, max_active)
        self._active = 0  # admitted sequences not yet finished (guarded by _lock)
        self._queued = 0  # admitted feeds / next-token queries not yet answered (guarded by _lock)
        self._closing = False
        # What the worker hands back during a tick, sent to each event loop in one call at its end:
        # one wake-up per tick rather than one per token.
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[Callable[[Any], object], Any]]] = {}
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
    def idle(self) -> bool:
        """No job admitted and unanswered: nothing generating, nothing queued."""
        with self._lock:
            return self._active == 0 and self._queued == 0

    @property
    def active_generations(self) -> int:
        with self._lock:
            return self._active

    def fresh(self) -> SequenceState:
        """A new sequence at the start of a line: zero state, boundary token pending."""
        with torch.inference_mode():
            return SequenceState(self.model.init_state(1), self.tokenizer.boundary_id)

    async def feed(
        self, start: SequenceState, ids: list[int], with_logprobs: bool = True, top_logprobs: int = 0
    ) -> FeedResult:
        job, future = self._submit_call(_FeedJob, start, ids, with_logprobs, top_logprobs)
        await future
        return FeedResult(job.fed_logprobs, SequenceState(job.state, job.pending), job.fed_top)

    async def next_token(self, start: SequenceState, ids: list[int] | None = None) -> NextTokenResult:
        job, future = self._submit_call(_NextTokenJob, start, ids or [], with_logprobs=True)
        logprobs: Tensor = await future
        return NextTokenResult(logprobs, SequenceState(job.state, job.pending), job.fed_logprobs)

    def generate(
        self,
        start: SequenceState,
        settings: GenerationSettings,
        ids: list[int] | None = None,
        with_logprobs: bool = False,
        n: int = 1,
        top_logprobs: int = 0,
    ) -> Generation:
        """Feed `ids` (a prompt, logprobs and `top_logprobs` alternatives kept if asked) once, then sample n choices.

        Raises EngineBusy when the engine is full.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        job = _GenerateJob(
            state=start.state,
            pending=start.pending,
            ids=list(ids or []),
            with_logprobs=with_logprobs,
            loop=loop,
            receive=queue.put_nowait,
            admitted=n,
            top_logprobs=top_logprobs,
            settings=settings,
            n=n,
            open_choices=n,
        )
        self._admit(job)
        return Generation(self, job, queue)

    def beam(self, start: SequenceState, settings: BeamSettings, ids: list[int] | None = None) -> BeamRun:
        """Feed `ids`, then beam-search (one admitted sequence, however wide); EngineBusy when full."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        job = _BeamJob(
            state=start.state,
            pending=start.pending,
            ids=list(ids or []),
            with_logprobs=False,
            loop=loop,
            receive=functools.partial(_settle, future),
            admitted=1,
            search=BeamSearch(settings),
        )
        self._admit(job)
        return BeamRun(self, job, future)

    def _admit(self, job: _Job) -> None:
        """The one admission of decoding work: count it in, or refuse with EngineBusy."""
        with self._lock:
            self._check_open()
            if self._active + job.admitted > self.max_active:
                raise EngineBusy(
                    f"{self._active} sequences are generating and this request needs {job.admitted} more "
                    f"(max_active_sequences={self.max_active})"
                )
            self._active += job.admitted
            self._on_active(self._active)
            self._inbox.append(job)
            self._lock.notify()

    def _submit_call(
        self, kind: type[_Job], start: SequenceState, ids: list[int], with_logprobs: bool, top_logprobs: int = 0
    ) -> tuple[_Job, asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        job = kind(
            state=start.state,
            pending=start.pending,
            ids=list(ids),
            with_logprobs=with_logprobs,
            loop=loop,
            receive=functools.partial(_settle, future),
            admitted=1,
            top_logprobs=top_logprobs,
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
                    while not (self._inbox or self._prefilling or self._pool.rows or self._closing):
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
                    jobs = {*self._prefilling, *(row.job for row in self._pool.rows)}
                    self._prefilling.clear()
                    self._fail(list(jobs), exc)
                finally:
                    self._send()
        for job in {*self._inbox, *self._prefilling, *(row.job for row in self._pool.rows)}:
            self._deliver(job, EngineClosed("the engine is shutting down"))
        self._send()

    def _deliver(self, job: _Job, item: Any) -> None:
        """Queue an item for the job's caller; `_send` hands it over at the end of the tick."""
        self._outbox.setdefault(job.loop, []).append((job.receive, item))

    def _send(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(_receive_all, items)
            except RuntimeError:  # that loop has closed: nobody is waiting any more
                pass

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._prefilling if j.cancelled]:
            self._prefilling.remove(job)
            self._finished(job)
        for job in {row.job for row in self._pool.rows if row.job.cancelled}:
            self._finished(job)

    def _finished(self, job: _Job) -> None:
        """The job leaves the engine: its rows free their slots and it is counted out (once)."""
        for row in job.rows:
            if row.slot >= 0:
                self._pool.remove(row)
        job.rows = []
        with self._lock:
            if job.finished:
                return
            job.finished = True
            if isinstance(job, (_GenerateJob, _BeamJob)):
                self._active -= job.admitted
                self._on_active(self._active)
            else:
                self._queued -= 1

    def _fail(self, jobs: list[_Job], exc: Exception) -> None:
        for job in jobs:
            self._finished(job)  # counted out before the caller hears, so it can come straight back
            self._deliver(job, exc)

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
            logprobs, tops, state, pending = feed_tokens_with_top(
                self.model,
                cat_states([job.state for job in jobs]),
                [job.pending for job in jobs],
                [chunk for _, chunk in batch],
                with_logprobs=any(job.with_logprobs for job in jobs),
                top=max(job.top_logprobs for job in jobs),
            )
        except Exception as exc:  # a failed forward fails its jobs, not the engine
            for job in jobs:
                self._prefilling.remove(job)
            self._fail(jobs, exc)
            return
        for row, ((job, chunk), row_state, row_pending, row_logprobs) in enumerate(
            zip(batch, split_state(state), pending, logprobs, strict=True)
        ):
            job.state, job.pending = row_state, row_pending
            job.fed += len(chunk)
            if job.with_logprobs:
                job.fed_logprobs.extend(row_logprobs.tolist())
            if job.top_logprobs and tops is not None:
                values = tops[row].values[:, : job.top_logprobs].tolist()
                ids = tops[row].ids[:, : job.top_logprobs].tolist()
                job.fed_top.extend(
                    [(i, finite(v)) for i, v in zip(position_ids, position_values, strict=True)]
                    for position_ids, position_values in zip(ids, values, strict=True)
                )
            if job.fed < len(job.ids):
                continue
            self._prefilling.remove(job)
            self._start_decoding(job)

    def _start_decoding(self, job: _Job) -> None:
        """A fed job: answer it (a feed), or give it its rows in the decode batch."""
        start = state_tensors(job.state)
        if isinstance(job, _FeedJob):
            self._finished(job)
            self._deliver(job, None)
        elif isinstance(job, _NextTokenJob):
            job.rows = [_Row(job)]
            self._pool.add(job.rows[0], start, job.pending)
        elif isinstance(job, _GenerateJob):
            if job.settings.max_tokens <= 0:  # echo-only scoring
                self._finished(job)
                end = SequenceState(job.state, job.pending)
                for choice in range(job.n):
                    self._deliver(job, GenerationResult("length", end, [], job.fed_logprobs, choice, job.fed_top))
                return
            seed = job.settings.seed if job.settings.seed is not None else random_seed()
            history = [*job.settings.history]
            for choice in range(job.n):
                row = _SampledRow(job, choice, (seed + choice) % 2**63, history)
                job.rows.append(row)
                self._pool.add(row, start, job.pending, history if row.uses_history else None)
        elif isinstance(job, _BeamJob):
            assert job.search is not None
            if job.search.done:
                self._finished(job)
                self._deliver(job, [])
                return
            job.rows = [_Row(job) for _ in range(job.search.rows)]
            for beam_row in job.rows:
                self._pool.add(beam_row, start, job.pending)

    def _decode_step(self) -> None:
        """Advance every decoding row by one token in one forward; sample, answer or step each."""
        pool = self._pool
        rows = list(pool.rows)  # logits row i is rows[i]'s (rows may move slots as others leave)
        if not rows:
            return
        self._on_step(len(rows))
        logits, state = advance(self.model, pool.pending[: len(rows)], pool.state())  # (B, V)
        pool.write(state)
        sampled = [(i, row) for i, row in enumerate(rows) if isinstance(row, _SampledRow)]
        if sampled:
            self._sample_rows(logits, [row for _, row in sampled], [i for i, _ in sampled])
        queries = [i for i, row in enumerate(rows) if isinstance(row.job, _NextTokenJob)]
        if queries:
            answers = torch.log_softmax(logits[queries].float(), dim=-1).cpu()
            for answer, i in zip(answers, queries, strict=True):
                job = rows[i].job
                self._finished(job)
                self._deliver(job, answer)
        beams: dict[_BeamJob, list[int]] = {}
        for i, row in enumerate(rows):
            if isinstance(row.job, _BeamJob):
                beams.setdefault(row.job, []).append(i)
        for job, positions in beams.items():
            self._reorder_beam(job, self._step_beam(job, logits[positions]))

    def _sample_rows(self, logits: Tensor, rows: list[_SampledRow], slots: list[int]) -> None:
        """Sample every sampled row at once and hand each token to its request."""
        pool, device = self._pool, logits.device
        index = torch.tensor(slots, device=device)
        logits = logits if len(slots) == logits.shape[0] else logits[index]  # (S, V)
        history = pool.seen is not None and any(row.uses_history for row in rows)
        banned = None
        early = [
            i
            for i, row in enumerate(rows)
            if row.settings.eos_id is not None and len(row.generated) < row.settings.min_tokens
        ]
        if early:
            banned = torch.zeros(logits.shape, dtype=torch.bool, device=device)
            banned[early, [rows[i].settings.eos_id for i in early]] = True
        inputs = SamplerInputs(
            params=[row.settings.sampling for row in rows],
            seeds=[row.seed for row in rows],
            steps=[len(row.generated) for row in rows],
            seen=pool.seen[index] if history and pool.seen is not None else None,
            counts=pool.counts[index] if history and pool.counts is not None else None,
            banned=banned,
        )
        ids = sample(logits, inputs)  # (S,)
        pool.pending[index] = ids
        if history and pool.seen is not None and pool.counts is not None:
            pool.seen[index, ids] = True
            pool.counts[index, ids] += 1
        raw = torch.log_softmax(logits.float(), dim=-1)  # (S, V) the model's own log-probabilities
        chosen = raw.gather(1, ids.unsqueeze(1)).squeeze(1).tolist()
        wanted = max(row.settings.top_logprobs for row in rows)
        top_values: list[list[float]] = [[] for _ in rows]
        top_ids: list[list[int]] = [[] for _ in rows]
        if wanted:
            values, indices = torch.topk(raw, min(wanted, raw.shape[1]), dim=-1)
            top_values, top_ids = values.tolist(), indices.tolist()
        for i, (row, token_id) in enumerate(zip(rows, ids.tolist(), strict=True)):
            count = row.settings.top_logprobs
            self._emit(
                row, token_id, chosen[i], list(zip(top_ids[i][:count], map(finite, top_values[i][:count]), strict=True))
            )
        self._on_tokens(len(rows))

    def _emit(self, row: _SampledRow, token_id: int, logprob: float, top: list[tuple[int, float]]) -> None:
        """Hand one sampled token to its request; a row that has finished leaves the batch."""
        settings, matcher, job = row.settings, row.matcher, row.job
        previous, row.previous = row.previous, token_id
        row.generated.append(token_id)
        piece = self.tokenizer.piece(token_id, previous)
        finish: FinishReason | None = None
        if token_id == settings.eos_id:
            text, finish = matcher.flush(), "eos"  # the boundary token ends the text; its "\n" is not shown
        else:
            text = matcher.push(piece)
            if matcher.stopped:
                finish = "stop"
            elif len(row.generated) >= settings.max_tokens:
                text, finish = text + matcher.flush(), "length"
        self._deliver(job, TokenEvent(token_id, piece, text, finite(logprob), top, row.choice))
        if finish is None:
            return
        assert isinstance(job, _GenerateJob)
        end = SequenceState(self._row_state(row), token_id)
        self._pool.remove(row)
        job.rows.remove(row)
        job.open_choices -= 1
        if job.open_choices == 0:
            self._finished(job)  # counted out before the caller hears, so it can come straight back
        result = GenerationResult(finish, end, list(row.generated), job.fed_logprobs, row.choice, job.fed_top)
        self._deliver(job, result)

    def _row_state(self, row: Slotted) -> State:
        """A copy of one row's state (single-row tensors)."""
        tensors = [t[:, row.slot : row.slot + 1].clone() for t in self._pool.tensors]
        return (tensors[0], tensors[1]) if len(tensors) == 2 else tensors[0]

    def _step_beam(self, job: _BeamJob, logits: Tensor) -> list[tuple[int, int]]:
        assert job.search is not None
        return job.search.step(torch.log_softmax(logits.double(), dim=-1))

    def _reorder_beam(self, job: _BeamJob, next_rows: list[tuple[int, int]]) -> None:
        """The search's rows for its next step: each the state of its parent row advanced by its token."""
        assert job.search is not None
        if job.finished:
            return
        if job.search.done:
            self._finished(job)
            self._deliver(job, job.search.hypotheses())
            return
        pool = self._pool
        parents = torch.tensor([job.rows[parent].slot for parent, _ in next_rows], device=self.device)
        states = [tensor[:, parents] for tensor in pool.tensors]  # copies (layers, k, hidden), read first
        while len(job.rows) < len(next_rows):
            row = _Row(job)
            pool.add(row, [state[:, :1] for state in states], 0)
            job.rows.append(row)
        for row in job.rows[len(next_rows) :]:
            pool.remove(row)
        del job.rows[len(next_rows) :]
        targets = torch.tensor([row.slot for row in job.rows], device=self.device)
        for tensor, state in zip(pool.tensors, states, strict=True):
            tensor[:, targets] = state
        pool.pending[targets] = torch.tensor([token for _, token in next_rows], device=self.device)


def _receive_all(items: list[tuple[Callable[[Any], object], Any]]) -> None:
    for receive, item in items:
        receive(item)


def _settle(future: asyncio.Future[Any], item: Any) -> None:
    if future.done():
        return
    if isinstance(item, BaseException):
        future.set_exception(item)
    else:
        future.set_result(item)


def finite(value: float) -> float:
    """JSON has no -inf: a token of probability 0 gets the most negative float instead."""
    return value if math.isfinite(value) else -1e30
