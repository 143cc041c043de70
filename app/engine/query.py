"""Plain feeds and next-token queries: the jobs that answer with log-probabilities and take nothing further."""

from __future__ import annotations

import torch
from torch import Tensor
from typing_extensions import Self

from app.engine.job import Job, Row, Worker
from model.network import state_tensors


class FeedJob(Job):
    """Feed ids and answer with their log-probabilities and the state after them; holds no decode row."""

    def start(self, worker: Worker) -> None:
        worker.finish(self)
        worker.deliver(self, None)


class NextTokenJob(Job):
    """Feed ids, then one decode row answers with the distribution of the next token."""

    cost = 1

    def start(self, worker: Worker) -> None:
        row = QueryRow(self)
        self.rows = [row]
        worker.pool.add(row, state_tensors(self.state), self.pending)


class QueryRow(Row):
    @classmethod
    def step(cls, worker: Worker, rows: list[Self], logits: Tensor) -> None:
        answers = torch.log_softmax(logits.float(), dim=-1).cpu()  # (Q, V)
        for row, answer in zip(rows, answers, strict=True):
            worker.finish(row.job)
            worker.deliver(row.job, answer)
