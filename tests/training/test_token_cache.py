"""Token files: the memmap path gives today's batches bit for bit, and is never stale or partial."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.subword import SubwordTokenizer
from model.tokenizer import CharTokenizer, Tokenizer, WordTokenizer
from training import data, file_corpus
from training.batching import batchify, encode_stream, windows
from training.config import TrainConfig
from training.data import first_lines, load_corpus
from training.encoding import bpe_sample
from training.file_corpus import open_corpus
from training.token_cache import TOKENS_DIR, encoded_corpus
from training.trainer import Trainer

from .conftest import tiny_config, tiny_text

ROOT = Path(__file__).resolve().parents[2]
# Lines that test the edges: CRLF, a form feed and U+2028 (str.splitlines breaks there,
# the word level does not), Hangul, combining accents (NFC), emoji, tabs, runs of spaces.
ODD_LINES = [
    "the cat sat\r\n",
    "e\u0301t\u00e9 caf\u00e9 \u2028 na\u00efve\n",
    "\ud55c\uad6d\uc5b4 \ubb38\uc7a5\uc785\ub2c8\ub2e4!! \U0001f600\n",
    "\tindented   spaced  out\x0c form feed\n",
    "\n",
    "it's what we'll do, 3.14 and 42\n",
]


def odd_text(lines: int, seed: int) -> str:
    words = tiny_text(lines, seed).splitlines(keepends=True)
    return "".join(w + ODD_LINES[i % len(ODD_LINES)] for i, w in enumerate(words))


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks and chunks of a few hundred bytes, so that a small file crosses many of their edges."""
    monkeypatch.setattr(file_corpus, "BLOCK_BYTES", 300)
    monkeypatch.setattr(data, "CHUNK_CHARS", 200)


def old_tokenizer(config: TrainConfig, train: str) -> Tokenizer:
    """The tokenizers as the trainer built them before the token files (from the whole text)."""
    if config.level == "char":
        return CharTokenizer.build(train, max_size=config.max_vocab or None, min_freq=config.min_freq)
    if config.level == "subword":
        return SubwordTokenizer.train(train.splitlines(keepends=True), vocab_size=config.max_vocab)
    return WordTokenizer.build(
        train, max_size=config.max_vocab or None, min_freq=config.min_freq, pretokenizer=config.pretokenizer
    )


LEVELS = [
    {"level": "char"},
    {"level": "word", "max_vocab": 40},
    {"level": "word", "pretokenizer": "punctuation", "min_freq": 2},
    {"level": "subword", "max_vocab": 300},
]


def all_windows(batched: Any, bptt: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(i.clone(), t.clone()) for _, i, t in windows(batched, bptt)]


@pytest.mark.parametrize("settings", LEVELS, ids=lambda s: "-".join(map(str, s.values())))
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_memmap_batches_equal_the_in_memory_ones_bit_for_bit(
    tmp_path: Path, settings: dict[str, Any], direction: str
) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(odd_text(120, 1) + "no final line end", encoding="utf-8")
    config = TrainConfig(data=str(path), split="80/10/10", eval_lines=5, direction=direction, **settings)
    corpus = load_corpus(str(path), split="80/10/10")  # today's path: the text in memory
    tokenizer = old_tokenizer(config, corpus.train)
    cache = tmp_path / "cache"
    encoded = encoded_corpus(config, open_corpus(str(path), cache_dir=str(cache), split="80/10/10"), cache_dir=cache)
    assert encoded.tokenizer.to_dict() == tokenizer.to_dict()
    assert isinstance(encoded.splits["train"].ids, np.memmap)
    for split, text in {
        "train": corpus.train,
        "valid": first_lines(corpus.valid, 5),
        "test": first_lines(corpus.test, 5),
    }.items():
        old = batchify(encode_stream(tokenizer, text, direction), 3)
        new = batchify(encoded.stream(split, direction), 3)
        assert new.dtype == np.uint16 and new.shape == tuple(old.shape)
        for (old_in, old_out), (new_in, new_out) in zip(all_windows(old, 7), all_windows(new, 7), strict=True):
            assert torch.equal(old_in, new_in) and torch.equal(old_out, new_out)
            assert new_in.dtype == torch.long
        assert encoded.splits[split].stats.tokens == len(tokenizer.encode(text).ids)


def test_file_and_directory_splits_equal_the_in_memory_splits(tmp_path: Path) -> None:
    single = tmp_path / "one.txt"
    single.write_text(odd_text(50, 2) + "last line\u2028", encoding="utf-8")
    many = tmp_path / "many"
    many.mkdir()
    (many / "a.txt").write_text(odd_text(20, 3), encoding="utf-8")
    (many / "b.txt").write_text("no line end\u2028", encoding="utf-8")
    (many / "c.txt").write_text("", encoding="utf-8")
    (many / "cr.txt").write_bytes(b"old mac\rline ends\r")
    (many / "d.txt").write_text(odd_text(30, 4) + "tail", encoding="utf-8")
    (many / "notes.md").write_text("not read\n", encoding="utf-8")
    own = tmp_path / "own"
    own.mkdir()
    (own / "train.txt").write_text(odd_text(20, 5), encoding="utf-8")
    (own / "valid.txt").write_text(odd_text(5, 6) + "no end", encoding="utf-8")
    cr = tmp_path / "cr.txt"
    cr.write_bytes(b"".join(b"line %d\r\n" % i for i in range(30)) + b"last\r")
    for path in (single, many, own, cr):
        memory = load_corpus(str(path), split="70/20/10")
        streamed = open_corpus(str(path), cache_dir=str(tmp_path / "cache"), split="70/20/10")
        for split in ("train", "valid", "test"):
            assert "".join(streamed.chunks(split)) == memory.text(split), (path.name, split)
        assert streamed.sha256 == memory.sha256 and streamed.split_rule == memory.split_rule


def test_a_one_byte_change_is_encoded_again(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    text = tiny_text(200, 7)
    path.write_text(text)
    old = time.time() - 60
    os.utime(path, (old, old))  # old enough for its sha256 to be remembered by size and mtime
    cache = tmp_path / "cache"
    config = TrainConfig(data=str(path), level="char")
    first = encoded_corpus(config, open_corpus(str(path), cache_dir=str(cache)), cache_dir=cache)
    assert open_corpus(str(path), cache_dir=str(cache)).sha256 == first_sha(cache)  # remembered
    changed = text[:10] + ("X" if text[10] != "X" else "Y") + text[11:]  # same size
    path.write_text(changed)
    second = encoded_corpus(config, open_corpus(str(path), cache_dir=str(cache)), cache_dir=cache)
    assert second.directory != first.directory
    expected = encode_stream(CharTokenizer.build(load_corpus(str(path)).train), load_corpus(str(path)).train)
    assert np.array_equal(np.asarray(second.splits["train"].ids, dtype=np.int64), expected.numpy())
    assert not np.array_equal(np.asarray(first.splits["train"].ids), np.asarray(second.splits["train"].ids))


def first_sha(cache: Path) -> dict[str, str]:
    entry = json.loads(next((cache / TOKENS_DIR / "sha256").glob("*.json")).read_text())
    return {Path(entry["path"]).name: entry["sha256"]}


KILLER = """
import os, signal, sys
from pathlib import Path
from training import token_cache
from training.config import TrainConfig
from training.file_corpus import open_corpus

real = token_cache.encode_chunks
def dying(tokenizer, chunks):
    for n, item in enumerate(real(tokenizer, chunks)):
        if n == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # as a kill -9 or the OOM killer would, mid-file
        yield item
token_cache.encode_chunks = dying
path, cache = sys.argv[1], Path(sys.argv[2])
import training.file_corpus, training.data
training.file_corpus.BLOCK_BYTES = 300
training.data.CHUNK_CHARS = 200
config = TrainConfig(data=path, level="word")
token_cache.encoded_corpus(config, open_corpus(path, cache_dir=str(cache)), cache_dir=cache)
"""


def test_a_killed_encode_leaves_nothing_that_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(tiny_text(300, 8))
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", KILLER, str(path), str(cache)], env=env, cwd=ROOT, check=False)
    assert killed.returncode == -9
    leftovers = list((cache / TOKENS_DIR).rglob("*.tmp"))
    assert leftovers and not list((cache / TOKENS_DIR).rglob("train.json"))  # half a file, and no marker
    config = TrainConfig(data=str(path), level="word")
    encoded = encoded_corpus(config, open_corpus(str(path), cache_dir=str(cache)), cache_dir=cache)
    corpus = load_corpus(str(path))
    expected = encode_stream(WordTokenizer.build(corpus.train), corpus.train)
    assert np.array_equal(np.asarray(encoded.splits["train"].ids, dtype=np.int64), expected.numpy())


def test_a_file_that_does_not_match_its_marker_is_encoded_again(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(tiny_text(100, 9))
    cache = tmp_path / "cache"
    config = TrainConfig(data=str(path), level="char")
    first = encoded_corpus(config, open_corpus(str(path), cache_dir=str(cache)), cache_dir=cache)
    assert first.directory is not None
    expected = np.array(first.splits["train"].ids)
    bin_path = first.directory / "train.bin"
    bin_path.write_bytes(bin_path.read_bytes()[:-2])  # one token short: not the file the marker describes
    again = encoded_corpus(config, open_corpus(str(path), cache_dir=str(cache)), cache_dir=cache)
    assert np.array_equal(np.asarray(again.splits["train"].ids), expected)


def test_resume_over_a_memmap_corpus_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(tiny_text(90, 10))
    common: dict[str, Any] = {
        "data": str(path),
        "cache_dir": str(tmp_path / "cache"),
        "optimizer": "adamw",
        "lr": 0.01,
        "dropout": 0.3,
        "epochs": 3,
        "bptt": 16,
    }
    straight = Trainer(tiny_config(tmp_path / "straight", max_steps=30, **common))
    assert isinstance(straight.train_data, np.memmap) and straight.steps_per_epoch < 30
    straight.run()
    Trainer(tiny_config(tmp_path / "resumed", max_steps=13, **common)).run()
    second = Trainer(tiny_config(tmp_path / "resumed", max_steps=30, **common), resume_from=tmp_path / "resumed")
    assert second.progress.step == 13
    second.run()
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    figures = json.loads((tmp_path / "resumed" / "config.json").read_text())["training"]
    assert figures["token_files"].startswith(str(tmp_path / "cache" / TOKENS_DIR))


def test_the_trainer_reads_the_same_batches_from_the_cache_as_from_text(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(odd_text(80, 11))
    config = tiny_config(tmp_path / "out", data=str(path), cache_dir=str(tmp_path / "cache"), eval_lines=4)
    cached = Trainer(config)
    in_memory = Trainer(config, corpus=load_corpus(str(path)))
    assert cached.split_stats == in_memory.split_stats
    assert np.array_equal(cached.train_data, in_memory.train_data)
    for split in ("valid", "test"):
        assert np.array_equal(cached.eval_data[split], in_memory.eval_data[split])


def test_the_bpe_sample_is_spread_over_the_train_split(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"line {i}\n" for i in range(2000)))
    source = open_corpus(str(path), cache_dir=str(tmp_path / "cache"), split="100/0/0")
    whole = list(bpe_sample(source, 1.0))  # 1 MB: more than the split, so all of it
    assert whole == path.read_text().splitlines(keepends=True)
    sample = list(bpe_sample(source, 0.002))  # 2 kB of about 17 kB
    numbers = [int(line.split()[1]) for line in sample]
    assert 1000 < sum(len(line) for line in sample) < 4000
    assert numbers[0] == 0 and numbers[-1] > 1500  # from the start to the end, not a prefix
