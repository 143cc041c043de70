"""Sampled generation: a job of n choices, one decode row each, all rows of a tick sampled in one call.

The caller's side is `Generation`, an async iterator of TokenEvents that ends when
every choice has finished; `results` then holds each choice's GenerationResult.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol

import torch
from torch import Tensor
from typing_extensions import Self

from app.engine.constraint import CompiledConstraint
from app.engine.job import Job, Row, Worker
from app.engine.output import Released, TextOutput
from app.engine.row_constraint import RowConstraint, likeliest_spelling
from app.engine.types import FinishReason, GenerationResult, GenerationSettings, TokenEvent, finite
from model.network import State, state_tensors
from model.sampling import SamplerInputs, random_seed, sample


class GenerateJob(Job):
    """Feed a prompt once, then fork its state into n sampled rows; choice i draws from seed + i.

    A constrained job comes `compiled` (before admission, off the event loop); each row
    owns a RowConstraint forked from it.
    """

    def __init__(
        self, settings: GenerationSettings, n: int, compiled: CompiledConstraint | None = None, **job: Any
    ) -> None:
        super().__init__(**job)
        self.settings = settings
        self.n = n
        self.cost = n
        self.open_choices = n
        self.compiled = compiled

    def start(self, worker: Worker) -> None:
        if self.settings.max_tokens <= 0:  # echo-only scoring
            worker.finish(self)
            end, held = self.fed_end(), self.settings.carried_bytes or b""
            for choice in range(self.n):
                result = GenerationResult(
                    "length", end, [], self.fed_logprobs, choice, self.fed_top, held, cached=self.cached
                )
                worker.deliver(self, result)
            return
        compiled = self.compiled
        spelling = None
        if compiled is not None and compiled.options and self.settings.sampling.temperature == 0:
            spelling = likeliest_spelling(worker.model, self.state, self.pending, compiled)
        seed = self.settings.seed if self.settings.seed is not None else random_seed()
        start = state_tensors(self.state)
        unk_id = worker.tokenizer.unk_id
        for choice in range(self.n):
            row = SampledRow(self, choice, (seed + choice) % 2**64, worker, unk_id)
            if compiled is not None:
                row.constraint = RowConstraint.of(compiled, worker.constraints, spelling, own=choice == 0)
            self.rows.append(row)
            worker.pool.add(row, start, self.pending, self.settings.history if row.uses_history else None)

    def end_choice(self, worker: Worker, row: SampledRow, result: GenerationResult) -> None:
        """One choice has finished: its row leaves the batch; the job leaves with its last choice."""
        worker.pool.remove(row)
        self.rows.remove(row)
        self.open_choices -= 1
        if self.open_choices == 0:
            worker.finish(self)  # counted out before the caller hears, so it can come straight back
        worker.deliver(self, result)


class SampledRow(Row):
    def __init__(self, job: GenerateJob, choice: int, seed: int, worker: Worker, unk_id: int | None) -> None:
        super().__init__(job)
        self.generate_job = job
        self.settings = settings = job.settings
        self.choice = choice
        self.seed = seed
        self.generated: list[int] = []
        self.last_token_at: float | None = None  # perf_counter() of its last token (the latency histograms)
        self.output = TextOutput(
            worker.tokenizer,
            settings.stop,
            job.pending,
            settings.max_tokens,
            settings.carried_bytes,
            settings.stop_ids,
            settings.include_stop,
        )
        self.uses_history = settings.sampling.uses_history
        self.byte_level = bool(worker.tokenizer.partial_ids)  # a token may hold part of a character
        # Never drawn: <unk> (unless asked for) and, before min_tokens, the end of the text.
        self.always_banned = [] if settings.sampling.allow_unk or unk_id is None else [unk_id]
        self.always_banned += [words[0] for words in settings.bad_words if len(words) == 1]
        self.bad_sequences = [words for words in settings.bad_words if len(words) > 1]
        self.ends = [] if settings.eos_id is None else [settings.eos_id]
        self.ends += settings.stop_ids  # what min_tokens holds back
        # allowed_token_ids: the only tokens it may draw, (V,) bool on the device
        self.only: Tensor | None = None
        if settings.allowed_ids is not None:
            self.only = torch.zeros(worker.tokenizer.vocab_size, dtype=torch.bool, device=worker.device)
            self.only[list(settings.allowed_ids)] = True
        self.constraint: RowConstraint | None = None  # a constrained row's matcher and masks

    def banned(self) -> list[int]:
        """What this row may not draw now: <unk>, the end before min_tokens, and (inside a character
        a byte-level token began) every token that would not continue it as UTF-8."""
        banned = self.always_banned
        if self.byte_level:  # char and word tokens are whole characters: nothing to check per step
            banned = [*banned, *self.output.tokenizer.invalid_after(self.output.pending_bytes)]
        if self.bad_sequences:
            banned = [*banned, *self._bad_word_ends()]
        if self.constraint is not None:  # the constraint decides where the text ends
            return banned
        return [*banned, *self.ends] if len(self.generated) < self.settings.min_tokens else banned

    def _bad_word_ends(self) -> list[int]:
        """The last token of each bad word whose other tokens the text (prompt included) ends with."""
        found = []
        for words in self.bad_sequences:
            need = len(words) - 1
            tail = self.generated[-need:]
            if len(tail) < need:  # the start of the word may be the prompt's end
                tail = [*self.settings.history[len(tail) - need :], *tail]
            if tuple(tail) == words[:-1]:
                found.append(words[-1])
        return found

    @classmethod
    def step(cls, worker: Worker, rows: list[Self], logits: Tensor) -> None:
        """Sample every row at once and hand each token to its request.

        A constrained row's logits are masked to the tokens its constraint allows before
        the sampler (the log-probabilities reported stay the model's own), so constrained
        and free rows share one forward and one sampler call.
        """
        vocabulary, device = worker.constraints, worker.device
        waiting = [row for row in rows if row.constraint is not None and row.constraint.allowed is None]
        if waiting:
            ended = []
            for row, ok in zip(waiting, RowConstraint.receive(vocabulary, _constraints(waiting), device), strict=True):
                if not ok:  # a dead end (after a first step, only a bug: the compile checked the first mask)
                    assert row.constraint is not None
                    row.finish(worker, row.output.end(None, "length"), row.constraint.state_before())
                    ended.append(row)
            if ended:
                live = [i for i, row in enumerate(rows) if row not in ended]
                rows, logits = [rows[i] for i in live], logits[live]
                if not rows:
                    return
        masked = logits
        masked_rows = [i for i, row in enumerate(rows) if row.constraint is not None or row.only is not None]
        if masked_rows:
            positions = torch.tensor(masked_rows, device=logits.device)
            allowed = _masks([rows[i] for i in masked_rows])  # (C, V)
            masked = logits.index_put((positions,), logits[positions].masked_fill(~allowed, -math.inf))
        pool = worker.pool
        index = torch.tensor([row.slot for row in rows], device=logits.device)
        history = pool.seen is not None and pool.counts is not None and any(row.uses_history for row in rows)
        inputs = SamplerInputs(
            params=[row.settings.sampling for row in rows],
            seeds=[row.seed for row in rows],
            steps=[len(row.generated) for row in rows],
            seen=pool.seen[index] if history and pool.seen is not None else None,
            counts=pool.counts[index] if history and pool.counts is not None else None,
            banned=[(i, token) for i, row in enumerate(rows) for token in row.banned()],
        )
        ids = sample(masked, inputs)  # (S,)
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
        tokens = ids.tolist()
        ends: dict[Self, FinishReason] = {}
        going: list[Self] = []  # constrained rows whose text goes on
        for row, token_id in zip(rows, tokens, strict=True):
            if row.constraint is not None:
                end = row.constraint.consume(token_id)
                if end is not None:
                    ends[row] = end
                else:
                    going.append(row)
        # A row whose output may hold text back (stop strings) gets its next mask now, so that a dead end can
        # still end it with this token and release that text; the others' masks are computed while the next
        # forward runs (once the tokens are handed over).
        now = [row for row in going if row.output.holds_back]
        for row, ok in zip(now, RowConstraint.compute_now(vocabulary, _constraints(now), device), strict=True):
            if not ok:
                ends[row] = "length"
        for i, (row, token_id) in enumerate(zip(rows, tokens, strict=True)):
            count = row.settings.top_logprobs
            top = list(zip(top_ids[i][:count], map(finite, top_values[i][:count]), strict=True))
            row.emit(worker, token_id, chosen[i], top, ends.get(row))
        worker.hooks.on_tokens(len(rows))
        later = [row for row in going if not row.output.holds_back and row.slot >= 0]
        if later:
            slots = torch.tensor([row.slot for row in later], device=device)
            before = [tensor[:, slots] for tensor in pool.tensors]  # copies, (layers, R, hidden) each
            RowConstraint.compute_later(vocabulary, _constraints(later), before)

    def emit(
        self, worker: Worker, token_id: int, logprob: float, top: list[tuple[int, float]], end: FinishReason | None
    ) -> None:
        """Hand one sampled token to the request; a finished choice leaves the batch.

        A constrained row's end token adds no text; `end` is how its constraint ends it here.
        """
        self.generated.append(token_id)
        now = time.perf_counter()
        if self.last_token_at is None:
            worker.hooks.on_first_token(now - self.generate_job.admitted_at)
        else:
            worker.hooks.on_inter_token(now - self.last_token_at)
        self.last_token_at = now
        if self.constraint is not None and token_id == self.constraint.end_id:
            released = self.output.end(token_id, "stop")
        else:
            released = self.output.push(token_id, self.settings.eos_id if self.constraint is None else None, end)
        stop_reason = self.output.stop_reason if released.finish is not None else None
        event = TokenEvent(
            token_id, released.piece, released.text, finite(logprob), top, self.choice, released.finish, stop_reason
        )
        worker.deliver(self.generate_job, event)
        if released.finish is not None:
            self.finish(worker, released)

    def finish(self, worker: Worker, released: Released, state: State | None = None) -> None:
        """The choice has ended: its result, with the state before its last token (that token pending), and the row leaves.

        That state is the row's in the pool unless given (a dead end found a tick later).
        """
        assert released.finish is not None
        job = self.generate_job
        state = worker.pool.copy_state(self) if state is None else state
        end = job.fed_end().after(state, self.generated) if self.generated else job.fed_end()
        job.end_choice(
            worker,
            self,
            GenerationResult(
                released.finish,
                end,
                list(self.generated),
                job.fed_logprobs,
                self.choice,
                job.fed_top,
                held_bytes=self.output.pending_bytes,
                stop_reason=self.output.stop_reason,
                cached=job.cached,
            ),
        )


def _constraints(rows: Sequence[SampledRow]) -> list[RowConstraint]:
    return [row.constraint for row in rows if row.constraint is not None]


def _masks(rows: Sequence[SampledRow]) -> Tensor:
    """What each row may draw (R, V) bool: its constraint's mask and its allowed_token_ids, where it has them."""
    constraints = _constraints(rows)
    constrained: Iterator[Tensor] = iter(RowConstraint.allowed_of(constraints) if constraints else [])
    masks = []
    for row in rows:
        mask = next(constrained) if row.constraint is not None else None
        if row.only is not None:
            mask = row.only if mask is None else mask & row.only
        assert mask is not None  # only rows with a constraint or allowed_token_ids are masked
        masks.append(mask)
    return torch.stack(masks)


class Cancellable(Protocol):
    def cancel(self, job: Job) -> None: ...


class Generation:
    """The event-loop side of a generation: an async iterator of TokenEvents; `results` at the end."""

    def __init__(self, engine: Cancellable, job: GenerateJob, queue: asyncio.Queue[Any]) -> None:
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
            self._engine.cancel(self._job)
