"""Tiny random models and checkpoints made inside the tests."""

from __future__ import annotations

from pathlib import Path

import torch

from model.checkpoint import save_checkpoint
from model.network import RNNLM, ModelConfig
from model.subword import SubwordTokenizer
from model.tokenizer import CharTokenizer, Tokenizer, WordTokenizer

CHAR_TEXT = "the quick brown fox jumps over the lazy dog\n다람쥐 헌 쳇바퀴에 타고파\nhello world\n"
WORD_TEXT = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n"


def tiny_model(tokenizer: Tokenizer, cell: str = "lstm", hidden: int = 16, layers: int = 2, seed: int = 0) -> RNNLM:
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        cell=cell,  # type: ignore[arg-type]
        embedding_size=hidden,
        hidden_size=hidden,
        num_layers=layers,
        dropout=0.0,
        init_range=0.5,
    )
    return RNNLM(config).eval()


def char_tokenizer() -> CharTokenizer:
    return CharTokenizer.build(CHAR_TEXT)


def word_tokenizer() -> WordTokenizer:
    return WordTokenizer.build(WORD_TEXT)


def subword_tokenizer() -> SubwordTokenizer:
    """Byte-level BPE learned on the char and word texts (Hangul included)."""
    return SubwordTokenizer.train([CHAR_TEXT, WORD_TEXT] * 5, vocab_size=300)


def make_checkpoint(directory: Path, level: str = "char", cell: str = "lstm", seed: int = 0, hidden: int = 16) -> Path:
    makers = {"char": char_tokenizer, "word": word_tokenizer, "subword": subword_tokenizer}
    tokenizer: Tokenizer = makers[level]()
    model = tiny_model(tokenizer, cell=cell, seed=seed, hidden=hidden)
    return save_checkpoint(directory, model, tokenizer, training={"corpus": "tiny", "steps": 0})
