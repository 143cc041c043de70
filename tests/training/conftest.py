"""Tiny corpora and configs for the training tests: every run takes a second or less."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from training.config import TrainConfig
from training.data import Corpus

WORDS = "the cat dog sat ran on under a mat log big small red and".split()


def tiny_text(lines: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + "\n" for _ in range(lines))


def tiny_corpus() -> Corpus:
    return Corpus("tiny", tiny_text(60, 1), tiny_text(12, 2), tiny_text(12, 3), {"tiny.txt": "0" * 64}, "test")


def tiny_config(out: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "data": "tiny",
        "level": "char",
        "cell": "lstm",
        "embedding_size": 16,
        "hidden_size": 16,
        "num_layers": 2,
        "dropout": 0.0,
        "batch_size": 4,
        "bptt": 8,
        "eval_batch_size": 2,
        "optimizer": "sgd",
        "lr": 1.0,
        "epochs": 1,
        "log_every": 3,
        "progress": False,
        "threads": 1,
        "precision": "fp32",  # the same arithmetic on every machine; the bf16 tests ask for it
        "out": str(out),
        **overrides,
    }
    return TrainConfig(**values)


@pytest.fixture
def corpus() -> Corpus:
    return tiny_corpus()


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """Tiny models run fastest on one thread, and the CI machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
