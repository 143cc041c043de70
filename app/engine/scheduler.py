"""The scheduler: one worker thread per model that admits jobs, feeds them and steps every decode row.

Each tick the worker (1) feeds up to `prefill_tokens_per_step` queued prompt/text
tokens of every waiting job in one padded, packed forward (`feed_tokens_with_top`);
a job whose ids are all fed `start`s (answers, or takes decode rows); then (2) advances
every decode row by one token in one batched forward over the slot pool
(app/engine/state_pool.py) and hands each row kind its rows and logits in one `step` call.
What the tick hands back goes to each event loop in one `call_soon_threadsafe` at its
end: one wake-up per tick rather than one per token. A job whose caller has gone is
dropped at the start of the next tick.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from app.engine.constraint import ConstraintLimits, ConstraintVocabulary
from app.engine.job import Job, Row
from app.engine.prefix_cache import INTERVAL, PrefixCache
from app.engine.state_pool import StatePool
from app.engine.types import Hooks, finite
from app.errors import EngineBusy, EngineClosed
from app.settings import Settings
from model.checkpoint import Checkpoint
from model.inference import advance, feed_tokens_with_top, model_device
from model.network import State, cat_states, split_state, state_from_tensors, state_tensors

logger = logging.getLogger("app")


class Scheduler:
    """The worker thread of one model and the one admission every job passes."""

    def __init__(self, checkpoint: Checkpoint, settings: Settings, hooks: Hooks) -> None:
        self.model = checkpoint.model
        self.tokenizer = checkpoint.tokenizer
        self.device = model_device(self.model)
        self.limits = settings
        self.hooks = hooks
        with torch.inference_mode():
            self.pool: StatePool[Row] = StatePool(self.model, settings.max_active_sequences)
        self._lock = threading.Condition()
        self._inbox: deque[Job] = deque()  # admitted, not yet seen by the worker (guarded by _lock)
        self._feeding: deque[Job] = deque()  # the worker's: jobs whose ids are being fed
        self.active_rows = 0  # decode rows held by admitted jobs (guarded by _lock)
        self.queued = 0  # admitted row-less jobs not yet answered (guarded by _lock)
        self.constraints = ConstraintVocabulary(
            self.tokenizer,
            ConstraintLimits(
                settings.max_constraint_bytes, settings.constraint_compile_seconds, settings.constraint_cache_size
            ),
        )
        self.cache = PrefixCache(int(settings.prefix_cache_mb * 2**20), hooks.on_prefix_lookup, hooks.on_prefix_bytes)
        self._closing = False
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[Callable[[Any], object], Any]]] = {}
        self._thread = threading.Thread(target=self._run, name="rnnlm-engine", daemon=True)

    # ---- any thread ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join(timeout=10)
        self.constraints.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closing

    @property
    def refusing(self) -> bool:
        """Whether a job would be refused now: every decode row is held, or the feed queue is full."""
        return self.active_rows >= self.limits.max_active_sequences or self.queued >= self.limits.max_queued_requests

    def admit(self, job: Job) -> None:
        """The one admission: count the job in, or refuse it (EngineBusy) before any response starts.

        A job that holds decode rows counts them against max_active_sequences (a job wider
        than that, such as a very wide beam, counts as the whole engine: it runs alone); a
        row-less job counts as one queued request against max_queued_requests.
        """
        limits = self.limits
        job.cost = min(job.cost, limits.max_active_sequences)
        with self._lock:
            if self._closing:
                raise EngineClosed("the engine is shutting down")
            if job.cost and self.active_rows + job.cost > limits.max_active_sequences:
                raise EngineBusy(
                    f"{self.active_rows} sequences are decoding and this request needs {job.cost} more "
                    f"(max_active_sequences={limits.max_active_sequences})"
                )
            if not job.cost and self.queued >= limits.max_queued_requests:
                raise EngineBusy(
                    f"{self.queued} requests are queued (max_queued_requests={limits.max_queued_requests})"
                )
            if job.cost:
                self.active_rows += job.cost
                self.hooks.on_active(self.active_rows)
            else:
                self.queued += 1
            job.admitted_at = time.perf_counter()
            self._inbox.append(job)
            self._lock.notify()

    def cancel(self, job: Job) -> None:
        with self._lock:
            job.cancelled = True
            self._lock.notify()

    # ---- the worker thread --------------------------------------------------------------

    def deliver(self, job: Job, item: object) -> None:
        """Queue an item for the job's caller; `_send` hands it over at the end of the tick."""
        self._outbox.setdefault(job.loop, []).append((job.receive, item))

    def finish(self, job: Job) -> None:
        """The job leaves the engine: its rows free their slots and it is counted out (once)."""
        for row in job.rows:
            if row.slot >= 0:
                self.pool.remove(row)
        job.rows = []
        with self._lock:
            if job.finished:
                return
            job.finished = True
            if job.cost:
                self.active_rows -= job.cost
                self.hooks.on_active(self.active_rows)
            else:
                self.queued -= 1

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (self._inbox or self._feeding or self.pool.rows or self._closing):
                        self._lock.wait()
                    if self._closing:
                        break
                    arrived = list(self._inbox)
                    self._inbox.clear()
                self._feeding.extend(arrived)
                if any(job.priority for job in self._feeding):  # vLLM's priority: lower first, then first come
                    self._feeding = deque(sorted(self._feeding, key=lambda job: job.priority))
                try:
                    for job in arrived:
                        self._resume(job)
                    self._drop_cancelled()
                    self._feed_step()
                    self._decode_step()
                except Exception as exc:  # a bug must fail the jobs in hand, never kill the worker
                    logger.exception("engine tick failed")
                    jobs = {*self._feeding, *(row.job for row in self.pool.rows)}
                    self._feeding.clear()
                    self._fail(list(jobs), exc)
                finally:
                    self._report_queue()
                    self._send()
        for job in {*self._inbox, *self._feeding, *(row.job for row in self.pool.rows)}:
            self.deliver(job, EngineClosed("the engine is shutting down"))
        self._send()

    def _report_queue(self) -> None:
        """The gauges after a tick: jobs admitted and not yet fed (or being fed), jobs decoding."""
        with self._lock:
            waiting = len(self._inbox) + len(self._feeding)
        self.hooks.on_queue(waiting, len({row.job for row in self.pool.rows}))

    def _send(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(_receive_all, items)
            except RuntimeError:  # that loop has closed: nobody is waiting any more
                pass

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._feeding if j.cancelled]:
            self._feeding.remove(job)
            self.finish(job)
        for job in {row.job for row in self.pool.rows if row.job.cancelled}:
            self.finish(job)

    def _fail(self, jobs: list[Job], exc: Exception) -> None:
        for job in jobs:
            self.finish(job)  # counted out before the caller hears, so it can come straight back
            self.deliver(job, exc)

    def _resume(self, job: Job) -> None:
        """Start a job whose history is known from the longest cached prefix of its prompt."""
        if not self.cache.enabled or job.history is None or not job.ids:
            return
        before = len(job.history)
        key = (*job.history, *job.ids)
        hit = self.cache.longest(key, before, job.with_logprobs, job.top_logprobs)
        job.cached_upto = hit[0] if hit else before
        job.parts_at = self.cache.divergence(key, job.cached_upto)
        if hit is None:
            return
        length, entry = hit
        job.state, job.pending, job.fed = entry.state, key[length - 1], length - before
        job.cached = job.fed
        if job.with_logprobs and entry.logprobs is not None:
            job.fed_logprobs = entry.logprobs[before:length].tolist()
        if job.top_logprobs and entry.top_ids is not None and entry.top_values is not None:
            ids = entry.top_ids[before:length, : job.top_logprobs].tolist()
            values = entry.top_values[before:length, : job.top_logprobs].tolist()
            job.fed_top = [list(zip(i, v, strict=True)) for i, v in zip(ids, values, strict=True)]

    def _feed_step(self) -> None:
        """Feed up to `prefill_tokens_per_step` queued tokens (chunked across ticks) in one forward."""
        budget = self.limits.prefill_tokens_per_step
        batch: list[tuple[Job, list[int]]] = []
        for job in self._feeding:
            if budget <= 0:
                break
            chunk = job.ids[job.fed : job.fed + budget]
            budget -= max(len(chunk), 1)
            batch.append((job, chunk))
        if not batch:
            return
        jobs = [job for job, _ in batch]
        cuts = [self._cache_cuts(job, len(chunk)) for job, chunk in batch]
        try:
            fed = feed_tokens_with_top(
                self.model,
                cat_states([job.state for job in jobs]),
                [job.pending for job in jobs],
                [chunk for _, chunk in batch],
                with_logprobs=any(job.with_logprobs for job in jobs),
                top=max(job.top_logprobs for job in jobs),
                cuts=[[cut for cut in row if cut < len(chunk)] for row, (_, chunk) in zip(cuts, batch, strict=True)],
            )
        except Exception as exc:  # a failed forward fails its jobs, not the engine
            for job in jobs:
                self._feeding.remove(job)
            self._fail(jobs, exc)
            return
        for row, ((job, chunk), row_state, row_pending, row_logprobs) in enumerate(
            zip(batch, split_state(fed.state), fed.pending, fed.logprobs, strict=True)
        ):
            job.state, job.pending = row_state, row_pending
            if job.with_logprobs:
                job.fed_logprobs.extend(row_logprobs.tolist())
            if job.top_logprobs and fed.tops is not None:
                values = fed.tops[row].values[:, : job.top_logprobs].tolist()
                ids = fed.tops[row].ids[:, : job.top_logprobs].tolist()
                job.fed_top.extend(
                    [(i, finite(v)) for i, v in zip(position_ids, position_values, strict=True)]
                    for position_ids, position_values in zip(ids, values, strict=True)
                )
            states = (
                [*fed.snapshots[row], row_state] if cuts[row] and cuts[row][-1] == len(chunk) else fed.snapshots[row]
            )
            for cut, state in zip(cuts[row], states, strict=True):
                self._cache(job, job.fed + cut, state)
            job.fed += len(chunk)
            if job.fed < len(job.ids):
                continue
            self._feeding.remove(job)
            self.hooks.on_queue_time(time.perf_counter() - job.admitted_at)
            job.start(self)

    def _cache_cuts(self, job: Job, length: int) -> list[int]:
        """Where in its next `length` ids a job's state is worth caching: every INTERVAL tokens from the
        fresh start, where it leaves the prompts before it, and at its end."""
        if not self.cache.enabled or job.history is None or not length:
            return []
        start = len(job.history) + job.fed  # tokens from the fresh start before this chunk
        end = len(job.history) + len(job.ids)
        points = {*range(start - start % INTERVAL + INTERVAL, start + length + 1, INTERVAL), job.parts_at}
        if start + length == end:
            points.add(end)
        return sorted(n - start for n in points if start < n <= start + length)

    def _cache(self, job: Job, fed: int, state: State) -> None:
        """Keep the state after the job's first `fed` ids, with their logprobs when they go back to a fresh start."""
        assert job.history is not None
        complete = not job.history and job.with_logprobs  # logprobs of every token of the key
        logprobs = torch.tensor(job.fed_logprobs[:fed], dtype=torch.float64) if complete else None
        tops = None
        if complete and job.top_logprobs and len(job.fed_top) >= fed:
            tops = (
                torch.tensor([[i for i, _ in top] for top in job.fed_top[:fed]], dtype=torch.long),
                torch.tensor([[v for _, v in top] for top in job.fed_top[:fed]], dtype=torch.float64),
            )
        kept = state_from_tensors([t.clone() for t in state_tensors(state)])  # not a view into the batch
        key = (*job.history, *job.ids[:fed])
        self.cache.put(key, kept, logprobs, tops, parent=job.cached_upto)
        job.cached_upto = len(key)

    def _decode_step(self) -> None:
        """Advance every decode row by one token in one forward, then step each row kind on its rows."""
        rows = list(self.pool.rows)  # logits row i is rows[i]'s (rows may move slots as others leave)
        if not rows:
            return
        self.hooks.on_step(len(rows))
        logits, state = advance(self.model, self.pool.pending[: len(rows)], self.pool.state())  # (B, V)
        self.pool.write(state)
        kinds: dict[type[Row], list[int]] = {}
        for i, row in enumerate(rows):
            kinds.setdefault(type(row), []).append(i)
        for kind, positions in kinds.items():
            kind.step(self, [rows[i] for i in positions], _rows_of(logits, positions))


def _rows_of(logits: Tensor, positions: list[int]) -> Tensor:
    """logits[positions] without a copy when the positions are every row in order."""
    return logits if len(positions) == logits.shape[0] else logits[positions]


def _receive_all(items: list[tuple[Callable[[Any], object], Any]]) -> None:
    for receive, item in items:
        receive(item)
