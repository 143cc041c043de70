"""Beam search in the engine: one job holds a search's rows (the beams, then the greedy path).

Each tick the search (model/beam_search.py) picks, from its rows' next-token
log-probabilities, the rows of its next step as (parent row, token); the rows are then
rewritten in place to those parents' states with those tokens pending. The caller's
side is `BeamRun`: await `hypotheses()`.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import torch
from torch import Tensor
from typing_extensions import Self

from app.engine.constraint import CompiledConstraint
from app.engine.job import Job, Row, Worker
from app.engine.row_constraint import RowConstraint
from app.engine.sampled import Cancellable
from model.beam_search import BeamSearch, BeamSettings, Hypothesis
from model.network import state_tensors


class BeamJob(Job):
    """Feed a prompt, then search; its cost is the most rows it holds at once (the beams and the greedy path).

    With a constraint (`compiled` before admission, off the event loop) every row owns a
    RowConstraint: the tokens it does not allow get -inf before the search scores its
    candidates (the others keep the model's own log-probabilities), a row of the next
    step takes a copy of its parent's moved by its token, and the constraint's end token
    (the line boundary) is the search's end of text, so a hypothesis that completes the
    constraint ends with it.
    """

    def __init__(self, settings: BeamSettings, compiled: CompiledConstraint | None = None, **job: Any) -> None:
        super().__init__(**job)
        self.search = BeamSearch(settings)
        self.cost = settings.beam_width + settings.with_greedy
        self.compiled = compiled
        self.constraints: list[RowConstraint] = []  # with a constraint: one per row, in the search's row order

    def start(self, worker: Worker) -> None:
        if self.search.done:
            worker.finish(self)
            worker.deliver(self, [])
            return
        if self.compiled is not None:
            self.constraints = [
                RowConstraint.of(self.compiled, worker.constraints, own=row == 0) for row in range(self.search.rows)
            ]
        start = state_tensors(self.state)
        self.rows = [BeamRow(self) for _ in range(self.search.rows)]
        for row in self.rows:
            worker.pool.add(row, start, self.pending)

    def step(self, worker: Worker, logits: Tensor) -> None:
        """One step of the search on its rows' logits (rows, V); answer when it is done."""
        logprobs = torch.log_softmax(logits.double(), dim=-1)  # (rows, V)
        if self.constraints:
            allowed = RowConstraint.masks(worker.constraints, self.constraints, logprobs.device)  # (rows, V)
            logprobs = logprobs.masked_fill(~allowed, -math.inf)
        next_rows = self.search.step(logprobs)
        if self.search.done:
            worker.finish(self)
            worker.deliver(self, self.search.hypotheses())
            return
        if self.constraints:
            self.constraints = [self.constraints[parent].moved(token) for parent, token in next_rows]
        self._reorder(worker, next_rows)

    def _reorder(self, worker: Worker, next_rows: list[tuple[int, int]]) -> None:
        """The rows of the next step: each the state of its parent row, its token pending."""
        pool = worker.pool
        parents = torch.tensor([self.rows[parent].slot for parent, _ in next_rows], device=worker.device)
        states = [tensor[:, parents] for tensor in pool.tensors]  # copies (layers, k, hidden), read first
        while len(self.rows) < len(next_rows):
            added = BeamRow(self)
            pool.add(added, [state[:, :1] for state in states], 0)
            self.rows.append(added)
        for row in self.rows[len(next_rows) :]:
            pool.remove(row)
        del self.rows[len(next_rows) :]
        targets = torch.tensor([row.slot for row in self.rows], device=worker.device)
        for tensor, state in zip(pool.tensors, states, strict=True):
            tensor[:, targets] = state
        pool.pending[targets] = torch.tensor([token for _, token in next_rows], device=worker.device)


class BeamRow(Row):
    def __init__(self, job: BeamJob) -> None:
        super().__init__(job)
        self.beam_job = job

    @classmethod
    def step(cls, worker: Worker, rows: list[Self], logits: Tensor) -> None:
        """Step each search once on its rows' logits, in the search's own row order.

        That order is the job's, not the pool's: a row that leaves the pool moves the
        last row into its slot, which can reorder a search's rows there.
        """
        position: dict[Row, int] = {row: i for i, row in enumerate(rows)}
        for job in dict.fromkeys(row.beam_job for row in rows):
            job.step(worker, logits[[position[row] for row in job.rows]])


class BeamRun:
    """The event-loop side of a beam search: await `hypotheses()`; `cancel()` stops it."""

    def __init__(self, engine: Cancellable, job: BeamJob, future: asyncio.Future[Any]) -> None:
        self._engine = engine
        self._job = job
        self._future = future

    async def hypotheses(self) -> list[Hypothesis]:
        try:
            result: list[Hypothesis] = await self._future
            return result
        finally:
            self.cancel()

    @property
    def cached(self) -> int:
        """Of the prompt's ids, how many the prefix-state cache spared feeding (known once the search started)."""
        return self._job.cached

    def cancel(self) -> None:
        """Stop searching (no-op once answered); the rows leave the batch at the next tick."""
        if not self._job.cancelled and not self._job.finished:
            self._engine.cancel(self._job)
