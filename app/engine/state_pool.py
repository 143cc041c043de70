"""The decoding rows' recurrent states, kept on the model's device in preallocated tensors.

Every row being decoded owns one slot of `(layers, capacity, hidden)` state tensors (two
for an LSTM), a pending token and, for rows whose sampling reads their history, a row
of the seen-token mask and of the generated-token counts. The rows are kept packed in
slots [0, size): a decode step runs the model on the slices `[:, :size]` (views, no
gather), and a row that leaves is replaced by the last one (one row copied).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

import torch
from torch import Tensor

from model.network import RNNLM, State, state_from_tensors, state_tensors


class Slotted:
    """Something that holds a slot of the pool (a decoding row)."""

    slot: int = -1


Row = TypeVar("Row", bound=Slotted)


class StatePool(Generic[Row]):
    def __init__(self, model: RNNLM, capacity: int) -> None:
        self.model = model
        self.vocab_size = model.config.vocab_size
        self.capacity = max(capacity, 1)
        self.tensors = self._zeros(self.capacity)
        weight = model.decoder.weight
        self.pending = torch.zeros(self.capacity, dtype=torch.long, device=weight.device)
        self.seen: Tensor | None = None  # (capacity, V) bool, allocated when a row first needs it
        self.counts: Tensor | None = None  # (capacity, V) float32
        self.rows: list[Row] = []

    def _zeros(self, capacity: int) -> list[Tensor]:
        return state_tensors(self.model.init_state(capacity))

    @property
    def size(self) -> int:
        return len(self.rows)

    def state(self) -> State:
        """The packed rows' state: views (layers, size, hidden)."""
        return state_from_tensors([t[:, : self.size] for t in self.tensors])

    def write(self, state: State) -> None:
        """Store the state of every packed row after a step."""
        for tensor, value in zip(self.tensors, state_tensors(state), strict=True):
            tensor[:, : self.size].copy_(value)

    def add(self, row: Row, state: Sequence[Tensor], pending: int, history: Sequence[int] | None = None) -> None:
        """Give `row` the next slot, holding `state` (single-row tensors); `history` starts its seen tokens."""
        if self.size == self.capacity:
            self._grow()
        slot = self.size
        row.slot = slot
        self.rows.append(row)
        for tensor, value in zip(self.tensors, state, strict=True):
            tensor[:, slot].copy_(value[:, 0])
        self.pending[slot] = pending
        if history is not None:
            self._ensure_history()
        if self.seen is not None and self.counts is not None:
            self.seen[slot] = False
            self.counts[slot] = 0
            if history:
                self.seen[slot, torch.tensor(sorted(set(history)), device=self.seen.device)] = True

    def remove(self, row: Row) -> None:
        """Free the row's slot; the last row moves into it."""
        slot, last = row.slot, self.rows[-1]
        if last is not row:
            for tensor in self.tensors:
                tensor[:, slot] = tensor[:, last.slot]
            self.pending[slot] = self.pending[last.slot]
            if self.seen is not None and self.counts is not None:
                self.seen[slot] = self.seen[last.slot]
                self.counts[slot] = self.counts[last.slot]
            self.rows[slot] = last
            last.slot = slot
        self.rows.pop()
        row.slot = -1

    def copy_state(self, row: Row) -> State:
        """A copy of one row's state (single-row tensors)."""
        return state_from_tensors([t[:, row.slot : row.slot + 1].clone() for t in self.tensors])

    def _ensure_history(self) -> None:
        if self.seen is None:
            device = self.pending.device
            self.seen = torch.zeros(self.capacity, self.vocab_size, dtype=torch.bool, device=device)
            self.counts = torch.zeros(self.capacity, self.vocab_size, device=device)

    def _grow(self) -> None:
        """Double the capacity (the first steps of a busy server; never shrinks)."""
        size, self.capacity = self.capacity, self.capacity * 2
        grown = self._zeros(self.capacity)
        for new, old in zip(grown, self.tensors, strict=True):
            new[:, :size].copy_(old)
        self.tensors = grown
        self.pending = torch.cat([self.pending, torch.zeros_like(self.pending)])
        if self.seen is not None and self.counts is not None:
            self.seen = torch.cat([self.seen, torch.zeros_like(self.seen)])
            self.counts = torch.cat([self.counts, torch.zeros_like(self.counts)])
