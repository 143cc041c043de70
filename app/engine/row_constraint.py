"""One decode row's constraint: its matcher, the tokens it allows next and the mask coming.

A request's constraint is compiled once, before admission, off the event loop
(`Engine.compile_constraint`); each of its rows then owns a `RowConstraint` forked
from it. The sampled kind (sampled.py) and the beam kind (beam.py) both use it:

- `consume(token)`: the matcher takes the row's token (and says when that ends the text);
- the next mask is computed at once (`compute_now`, for several rows in one go), or on a
  background thread while the scheduler runs the next forward (`compute_later`), and
  taken when the next tick samples (`receive`);
- a greedy choice `spell`s one option: only its tokens, then the end, are allowed;
- a beam row's child is `moved` by its token.

A sampled row that no token can continue ends with "length" and the exact state: a
constraint whose mask is coming keeps its row's state from before its last token
(`state_before`).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future

import torch
from llguidance import LLMatcher
from torch import Tensor

from app.engine.constraint import CompiledConstraint, ConstraintVocabulary
from app.engine.types import FinishReason
from model.inference import feed_tokens
from model.network import RNNLM, State, cat_states, state_from_tensors


class RowConstraint:
    """A row's matcher and masks. `allowed` is (V,) bool on the device once known; None while it is coming."""

    def __init__(self, matcher: LLMatcher, end_id: int, spelling: Sequence[int] | None = None) -> None:
        self.matcher = matcher
        self.end_id = end_id  # the matcher's end of text: the line boundary
        self.spelling = list(spelling) if spelling is not None else None  # a greedy choice: the ids it must take
        self.taken = 0  # tokens the matcher has taken
        self.allowed: Tensor | None = None
        self.coming: tuple[Future[Tensor], int] | None = None  # its next mask, being computed (row i of the future's)
        self.before: tuple[list[Tensor], int] | None = None  # its row's state before its last token (row i of those)
        # What it allows first, as the compile computed it off the worker (a large grammar's first mask
        # can take tens of milliseconds: computed on the worker, it would pause every other row).
        self.start_mask: Tensor | None = None

    @classmethod
    def of(
        cls,
        compiled: CompiledConstraint,
        vocabulary: ConstraintVocabulary,
        spelling: Sequence[int] | None = None,
        own: bool = False,
    ) -> RowConstraint:
        """The constraint of one of a job's rows. `own`: the row takes the request's matcher itself (the first
        row; the compile thread made it), the others a fork of it, made here on the worker (a large grammar's
        fork takes tens of milliseconds, which every other row would wait)."""
        row = cls(compiled.matcher if own else compiled.fork(), vocabulary.end_id, spelling)
        row.start_mask = compiled.start_mask
        return row

    # ---- the matcher's moves ------------------------------------------------------------

    def consume(self, token_id: int) -> FinishReason | None:
        """The matcher takes the row's token: "stop" when that completes the text (the end token, or a text
        after which the constraint can take no more), else None."""
        self.allowed = None
        if token_id == self.end_id:
            return "stop"
        if not self.matcher.consume_token(token_id):  # the mask allowed it, so this is a bug
            raise RuntimeError(f"the constraint refused token {token_id}: {self.matcher.get_error()}")
        self.taken += 1
        return "stop" if self.matcher.is_stopped() else None

    def moved(self, token_id: int) -> RowConstraint:
        """A copy that has taken `token_id` (a beam row's child; refused: the copy is in error and allows nothing)."""
        matcher = self.matcher.deep_copy()
        matcher.consume_token(token_id)
        return RowConstraint(matcher, self.end_id)

    # ---- the masks ----------------------------------------------------------------------

    @staticmethod
    def masks(vocabulary: ConstraintVocabulary, constraints: Sequence[RowConstraint], device: torch.device) -> Tensor:
        """(len(constraints), V) bool on `device`: what each allows next, now (a beam step's rows)."""
        return vocabulary.masks([constraint.matcher for constraint in constraints], device)

    @classmethod
    def compute_now(
        cls, vocabulary: ConstraintVocabulary, constraints: Sequence[RowConstraint], device: torch.device
    ) -> list[bool]:
        """Each constraint's next mask, now (one call for all): whether each allows any token (False: a dead end)."""
        if not constraints:
            return []
        allowed = cls.masks(vocabulary, constraints, device)
        for constraint, mask in zip(constraints, allowed, strict=True):
            constraint._take(mask)
        return cls.allowed_of(constraints).any(dim=1).tolist()

    @staticmethod
    def allowed_of(constraints: Sequence[RowConstraint]) -> Tensor:
        """(len(constraints), V) bool: what each allows next (each known)."""
        masks = [constraint.allowed for constraint in constraints]
        assert all(mask is not None for mask in masks)
        return torch.stack([mask for mask in masks if mask is not None])

    @staticmethod
    def compute_later(
        vocabulary: ConstraintVocabulary, constraints: Sequence[RowConstraint], before: list[Tensor]
    ) -> None:
        """Start computing the next masks in the background, to overlap the next forward.

        `before` is the rows' states before their last tokens ((layers, R, hidden) copies,
        row i constraint i's), kept until the masks are known: a dead end found next tick
        still ends its row exactly.
        """
        if not constraints:
            return
        coming = vocabulary.masks_later([constraint.matcher for constraint in constraints])
        for i, constraint in enumerate(constraints):
            constraint.coming, constraint.before = (coming, i), (before, i)

    @classmethod
    def receive(
        cls, vocabulary: ConstraintVocabulary, constraints: Sequence[RowConstraint], device: torch.device
    ) -> list[bool]:
        """The next masks of constraints that wait for one (computed now where none is coming: a first step);
        whether each allows any token."""
        first = [constraint for constraint in constraints if constraint.coming is None]
        for constraint in first:
            if constraint.start_mask is not None:  # its first step: the compile's mask, copied to the device
                constraint._take(constraint.start_mask.to(device, copy=True))
                constraint.start_mask = None
        cls.compute_now(vocabulary, [c for c in first if c.allowed is None], device)
        for future in dict.fromkeys(c.coming[0] for c in constraints if c.coming is not None):
            allowed = future.result().to(device)  # (R, V)
            for constraint in constraints:
                if constraint.coming is not None and constraint.coming[0] is future:
                    constraint._take(allowed[constraint.coming[1]])
                    constraint.coming = None
        return [constraint.allowed is not None and bool(constraint.allowed.any()) for constraint in constraints]

    def state_before(self) -> State | None:
        """Its row's state before its last token, kept while its mask was coming (None: the row's own is exact)."""
        if self.before is None:
            return None
        before, i = self.before
        return state_from_tensors([tensor[:, i : i + 1] for tensor in before])

    def _take(self, mask: Tensor) -> None:
        """`mask` becomes what it allows next; spelling an option, only that option's next token (then the end)."""
        if self.spelling is not None:
            wanted = self.spelling[self.taken] if self.taken < len(self.spelling) else self.end_id
            only = torch.zeros_like(mask)
            only[wanted] = mask[wanted]
            mask = only
        self.allowed = mask


def likeliest_spelling(model: RNNLM, state: State, pending: int, compiled: CompiledConstraint) -> tuple[int, ...]:
    """Greedy over a choice is the option the model finds likeliest whole: the one /v1/score ranks first.

    Token by token, greedy would take the option with the likeliest first token. So the
    spellable options are scored after `state` and `pending` in one padded forward, and
    the row spells the best one (its events and log-probabilities are the model's).
    """
    spellings = [ids for _, ids in compiled.options]
    if len(spellings) < 2:
        return spellings[0]
    count = len(spellings)
    logprobs, _, _ = feed_tokens(
        model, cat_states([state] * count), [pending] * count, [list(ids) for ids in spellings]
    )
    scores = [float(values.double().sum()) for values in logprobs]
    return spellings[max(range(count), key=lambda i: scores[i])]
