"""A real corpus: a tiny char model must learn far more than the unigram statistics."""

import math
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from training.data import load_corpus
from training.trainer import train

from .conftest import tiny_config

DATA_DIR = os.environ.get("RNNLM_DATA_DIR", "")  # CI sets it to ../shared/data


def unigram_entropy(text: str) -> float:
    """Nats per char of the best context-free model (the train split's own frequencies)."""
    counts = Counter(text)
    total = sum(counts.values())
    return -sum(n / total * math.log(n / total) for n in counts.values())


@pytest.mark.slow
@pytest.mark.skipif(not Path(DATA_DIR, "tinyshakespeare", "input.txt").is_file(), reason="needs RNNLM_DATA_DIR")
def test_char_model_beats_the_unigram_baseline_on_tinyshakespeare(tmp_path: Path) -> None:
    full = load_corpus("tinyshakespeare", data_dir=DATA_DIR, cache_dir=str(tmp_path / "cache"))
    corpus = replace(full, train=full.train[:150_000], valid=full.valid[:20_000], test=full.valid[20_000:30_000])
    baseline = unigram_entropy(corpus.train)
    config = tiny_config(
        tmp_path / "model",
        embedding_size=32,
        hidden_size=128,
        num_layers=1,
        batch_size=16,
        bptt=32,
        eval_batch_size=8,
        optimizer="adamw",
        lr=1e-2,
        clip=1.0,
        schedule="cosine",
        max_steps=250,
        epochs=1,
        log_every=50,
    )
    figures = train(config, corpus=corpus).figures
    assert 3.0 < baseline < 3.4  # about 4.6 bits per char
    # 250 steps reach about 2.35 nats (3.4 bits); the unigram model is about 3.29 nats
    assert figures["val_loss_nats"] < baseline - 0.75, (figures["val_loss_nats"], baseline)
    assert figures["test_loss_nats"] < baseline - 0.75
