"""What a constraint asks of a sampled row: its masks, its matcher's moves, how it ends, greedy over a choice.

The sampled kind (sampled.py) calls these on its constrained rows each tick. A row's
mask for its next token is computed right after its token, on a background thread
while the scheduler runs the next forward (`allowed_later`), and taken when the next
tick samples (`receive`); a row whose output may hold text back (stop strings) gets it
at once instead (`allowed_now`), so that a dead end still ends it with that token and
releases the text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Protocol, TypeVar

import torch
from llguidance import LLMatcher
from torch import Tensor

from app.engine.constraint import Constraint
from app.engine.job import Worker
from app.engine.output import Released, TextOutput
from app.engine.types import FinishReason
from app.errors import ConstraintError
from model.inference import feed_tokens
from model.network import State, cat_states, state_from_tensors


class ConstrainedRow(Protocol):
    """The parts of a row these work on (SampledRow has them)."""

    slot: int
    output: TextOutput
    matcher: LLMatcher | None
    allowed: Tensor | None  # (V,) bool on the device: the tokens its constraint allows next, once known
    coming: tuple[Future[Tensor], int] | None  # its next mask, being computed (row i of the future's)
    before: tuple[list[Tensor], int] | None  # its state before its last token (row i of those tensors)

    def finish(self, worker: Worker, released: Released, state: State | None = None) -> None: ...


R = TypeVar("R", bound=ConstrainedRow)


def advance(worker: Worker, rows: Sequence[R], tokens: list[int]) -> tuple[dict[R, FinishReason], list[R]]:
    """Move each constrained row's matcher by its token: the rows whose text that completes, and the others.

    The end token completes the text ("stop"); so does a token after which the
    constraint can take no more.
    """
    ends: dict[R, FinishReason] = {}
    going: list[R] = []
    for row, token_id in zip(rows, tokens, strict=True):
        if row.matcher is None:
            continue
        row.allowed = None
        if token_id == worker.constraints.end_id:
            ends[row] = "stop"
        elif not row.matcher.consume_token(token_id):  # the mask allowed it, so this is a bug
            raise RuntimeError(f"the constraint refused token {token_id}: {row.matcher.get_error()}")
        elif row.matcher.is_stopped():
            ends[row] = "stop"
        else:
            going.append(row)
    return ends, going


def allowed_now(worker: Worker, rows: Sequence[R]) -> list[R]:
    """Each row's next allowed tokens, now; the rows with none (a dead end)."""
    if not rows:
        return []
    allowed = worker.constraints.masks([row.matcher for row in rows if row.matcher is not None], worker.device)
    for row, mask in zip(rows, allowed, strict=True):
        row.allowed = mask
    return [row for row, ok in zip(rows, allowed.any(dim=1).tolist(), strict=True) if not ok]


def allowed_later(worker: Worker, rows: Sequence[R]) -> None:
    """Start computing the rows' next masks in the background, to overlap the next forward.

    Each row keeps its state from before its last token, so that a dead end found next
    tick still ends it exactly: "length", with the state after its last token (that
    token pending).
    """
    if not rows:
        return
    slots = torch.tensor([row.slot for row in rows], device=worker.device)
    before = [tensor[:, slots] for tensor in worker.pool.tensors]  # copies, (layers, R, hidden) each
    coming = worker.constraints.masks_later([row.matcher for row in rows if row.matcher is not None])
    for i, row in enumerate(rows):
        row.coming, row.before = (coming, i), (before, i)


def receive(worker: Worker, rows: Sequence[R]) -> list[R]:
    """The masks of rows that wait for one (computed now for a first step); end (and return) the dead ends."""
    dead = allowed_now(worker, [row for row in rows if row.coming is None])  # after the compile check: only a bug
    for future in dict.fromkeys(row.coming[0] for row in rows if row.coming is not None):
        allowed = future.result().to(worker.device)  # (R, V)
        for row in rows:
            if row.coming is not None and row.coming[0] is future:
                row.allowed = allowed[row.coming[1]]
                row.coming = None
                if not bool(row.allowed.any()):
                    dead.append(row)
    for row in dead:
        state = None
        if row.before is not None:
            before, i = row.before
            state = state_from_tensors([tensor[:, i : i + 1] for tensor in before])
        row.finish(worker, row.output.end(None, "length"), state)
    return dead


def likeliest_choice(
    worker: Worker, state: State, pending: int, constraint: Constraint, at_line_start: bool
) -> Constraint:
    """Greedy over a choice is the option the model finds likeliest whole: the one /v1/score ranks first.

    Token by token, greedy would take the option with the likeliest first token. So the
    options are scored after `state` and `pending` in one padded forward, and the best
    one the vocabulary can spell becomes the constraint, which the row then generates as
    usual (its events and log-probabilities are the model's).
    """
    tokenizer = worker.tokenizer
    options = [option for option in json.loads(constraint.text) if isinstance(option, str)]
    spelled = [(option, tokenizer.encode(option).ids) for option in options]
    spelled = [(option, ids) for option, ids in spelled if ids and tokenizer.unk_id not in ids]
    if len(spelled) < 2:
        return constraint
    count = len(spelled)
    logprobs, _, _ = feed_tokens(worker.model, cat_states([state] * count), [pending] * count, [i for _, i in spelled])
    ranked = sorted(zip(spelled, logprobs, strict=True), key=lambda item: -float(item[1].double().sum()))
    for (option, _), _ in ranked:
        best = Constraint.choice([option], constraint.field)
        try:
            worker.constraints.compile(best, at_line_start)  # its text may not be one the row can generate
        except ConstraintError:
            continue
        return best
    return constraint
