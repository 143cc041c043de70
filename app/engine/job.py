"""The two shapes of work the scheduler knows: a job (what a caller submitted) and a row (a slot of the decode batch).

A job is fed its `ids` (a prompt) by the scheduler, in chunks shared with every other
job's, then `start`s: it answers at once (a plain feed) or takes rows in the decode
batch. Each tick every row advances by one token in one forward, and the scheduler
hands each row kind its rows and their logits in one `step` call, so a kind can batch
its own work (all sampled rows go through one sampler call). A new kind of decoding is
a new Job and Row pair in a file of its own; the scheduler never asks which kind it has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor
from typing_extensions import Self

from app.engine.constraint import ConstraintVocabulary
from app.engine.state_pool import Slotted, StatePool
from app.engine.types import Hooks, SequenceState, Top
from model.network import RNNLM
from model.tokenizer import Tokenizer


class Worker(Protocol):
    """What a job or a row kind may ask of the scheduler's worker thread."""

    model: RNNLM
    tokenizer: Tokenizer
    device: torch.device
    pool: StatePool[Row]  # the decode rows' states, pending tokens and histories
    hooks: Hooks
    constraints: ConstraintVocabulary  # the model's byte view for constraints, their cache and masks

    def deliver(self, job: Job, item: object) -> None:
        """Queue an item for the job's caller (handed over at the end of the tick)."""

    def finish(self, job: Job) -> None:
        """The job leaves the engine: its rows free their slots and its cost is counted out (once)."""


class Job:
    """A submitted piece of work; after submission only the worker thread touches it.

    `cost` is what admission counts: the decode rows the job will hold (a sampled choice
    1, a beam search its widest step, a next-token query 1). A job of cost 0 holds no
    row (a plain feed) and counts as one queued request instead. `priority` orders the
    feeding only (lower first): admission is at once, and every admitted row decodes
    every tick.
    """

    cost = 0

    def __init__(
        self,
        start: SequenceState,
        ids: list[int],
        loop: asyncio.AbstractEventLoop,
        receive: Callable[[Any], object],
        with_logprobs: bool = False,
        top_logprobs: int = 0,
        priority: int = 0,
    ) -> None:
        self.state, self.pending = start.state, start.pending
        self.history = start.history  # the tokens before `ids`, when known (keys the prefix cache)
        self.cached_upto = 0  # prefix cache: the last point of this prompt known to the cache (tokens from the start)
        self.parts_at = 0  # prefix cache: where the prompt leaves the ones fed before it, when it does
        self.cached = 0  # prefix cache: how many of `ids` a hit spared feeding
        self.ids = ids
        self.loop = loop  # where the caller waits
        self.receive = receive  # takes an item on that loop (never called from the worker)
        self.with_logprobs = with_logprobs
        self.top_logprobs = top_logprobs  # alternatives wanted at each fed position
        self.priority = priority  # vLLM's: lower is fed first (ties: first come, first fed)
        self.fed = 0
        self.admitted_at = 0.0  # time.perf_counter() at admission (the latency histograms start there)
        self.fed_logprobs: list[float] = []
        self.fed_top: list[Top] = []
        self.cancelled = False
        self.finished = False  # left the engine (counted out once)
        self.rows: list[Row] = []

    def start(self, worker: Worker) -> None:
        """Everything is fed: answer now, or take rows in the decode batch."""
        raise NotImplementedError

    def fed_end(self) -> SequenceState:
        """The sequence after every id (valid once they are all fed)."""
        return SequenceState(self.state, self.pending, None if self.history is None else (*self.history, *self.ids))


class Row(Slotted):
    """A row of the decode batch, owned by a job."""

    def __init__(self, job: Job) -> None:
        self.job = job

    @classmethod
    def step(cls, worker: Worker, rows: list[Self], logits: Tensor) -> None:
        """Every row of this kind after one forward: `logits` (len(rows), V), row i's are logits[i]."""
        raise NotImplementedError
