"""The subword and punctuation word levels in training, and bits per char for every level."""

import math
from pathlib import Path

import pytest

from model.checkpoint import load_checkpoint
from model.subword import SubwordTokenizer
from model.tokenizer import WordTokenizer
from training.config import ConfigError
from training.data import Corpus, first_lines
from training.metrics import read_metrics
from training.trainer import Trainer, train

from .conftest import tiny_config

RAW = "".join(
    f"{line}\n" for line in ["The cat sat, and the dog ran!", "영화가 정말 재밌다!! 최고", "A mat (red); a log..."] * 30
)


def raw_corpus() -> Corpus:
    return Corpus("raw", RAW, RAW[:200], RAW[:300], {"raw.txt": "0" * 64}, "test")


def test_subword_run_writes_a_subword_checkpoint(tmp_path: Path) -> None:
    figures = train(tiny_config(tmp_path, level="subword", max_vocab=300, max_steps=6), corpus=raw_corpus()).figures
    checkpoint = load_checkpoint(tmp_path)
    assert isinstance(checkpoint.tokenizer, SubwordTokenizer) and checkpoint.tokenizer.vocab_size == 300
    assert figures["val_unknown_rate"] == 0 and figures["test_unknown_rate"] == 0
    assert 0 < figures["val_tokens_per_char"] < 1  # merges learned on the train split
    assert figures["val_bpc"] == pytest.approx(
        figures["val_loss_nats"] * figures["val_tokens_per_char"] / math.log(2), rel=1e-3
    )


def test_subword_run_resumes_with_its_own_tokenizer(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, level="subword", max_vocab=300, max_steps=3)
    train(config, corpus=raw_corpus())
    resumed = Trainer(
        tiny_config(tmp_path, level="subword", max_vocab=300, max_steps=5), resume_from=tmp_path, corpus=raw_corpus()
    )
    assert resumed.tokenizer.to_dict() == load_checkpoint(tmp_path).tokenizer.to_dict()
    assert resumed.run().progress.step == 5


def test_punctuation_word_level_is_recorded(tmp_path: Path) -> None:
    figures = train(
        tiny_config(tmp_path, level="word", pretokenizer="punctuation", max_steps=3), corpus=raw_corpus()
    ).figures
    tokenizer = load_checkpoint(tmp_path).tokenizer
    assert isinstance(tokenizer, WordTokenizer) and tokenizer.pretokenizer == "punctuation"
    assert tokenizer.decode(tokenizer.encode(RAW).ids) == RAW
    assert figures["config"]["pretokenizer"] == "punctuation" and figures["val_unknown_rate"] == 0


def test_every_level_reports_bits_per_char_and_unknown_rate(tmp_path: Path) -> None:
    corpus = raw_corpus()
    corpus = Corpus("raw", corpus.train, corpus.valid + "zebra zebra\n", corpus.test, corpus.sha256, "test")
    figures = train(tiny_config(tmp_path, level="word", max_steps=3), corpus=corpus).figures
    assert figures["val_unknown_rate"] > 0 and figures["val_bpc"] > 0 and figures["test_bpc"] > 0
    assert next(r for r in read_metrics(tmp_path) if r["kind"] == "valid")["bpc"] == pytest.approx(figures["val_bpc"])


def test_eval_lines_scores_only_the_first_lines(tmp_path: Path) -> None:
    assert first_lines("a\nb\nc\n", 2) == "a\nb\n" and first_lines("a\nb", 0) == "a\nb"
    trainer = Trainer(tiny_config(tmp_path, level="char", eval_lines=2), corpus=raw_corpus())
    assert trainer.split_stats["valid"].chars == len("".join(RAW[:200].splitlines(keepends=True)[:2]))


def test_subword_level_needs_a_vocabulary_size(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--max-vocab"):
        tiny_config(tmp_path, level="subword")
