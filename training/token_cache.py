"""Token files: each split of a corpus is encoded once, and every later run memory-maps it.

As nanoGPT's `prepare.py` writes `train.bin` for `train.py` to `np.memmap`, the first
run over a corpus writes its splits' ids under the download cache, and later runs
(and `--resume`, and every torchrun rank) open them without reading the text again:

    <cache_dir>/tokens/<corpus key>/tokenizer-<vocabulary key>.json   learned from train
    <cache_dir>/tokens/<corpus key>/<tokenizer key>/<split>.bin       ids, uint16 or uint32
    <cache_dir>/tokens/<corpus key>/<tokenizer key>/<split>.json      the marker, written last

The corpus key hashes the files' sha256, the split rule and where the corpus came from;
the vocabulary key the fields the tokenizer is learned with; the tokenizer key the
tokenizer's own JSON. A changed byte, split rule or tokenizer therefore names other
files, never stale ones. A split is written to a temporary file, renamed into place and
only then given its marker (ids, characters, unknown tokens; the .bin's size must
match), so an encode killed at any point is never taken for a whole one. A capped
validation or test split (`--eval-lines N`) is a file of its own (`valid.first<N>.bin`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from model.checkpoint import write_json_atomic
from model.tokenizer import Tokenizer, TokenizerError
from model.tokenizers import tokenizer_from_dict
from training import distributed as dist_util
from training.config import TrainConfig
from training.data import SPLITS, CorpusSource
from training.distributed import DistributedContext
from training.encoding import build_tokenizer_from, encode_chunks, token_dtype
from training.metrics import SplitStats

CACHE_FORMAT_VERSION = 1
TOKENS_DIR = "tokens"
VOCABULARY_FIELDS = ("level", "max_vocab", "min_freq", "lowercase", "pretokenizer")


@dataclass(frozen=True)
class TokenSplit:
    """A split's ids (forward order; a read-only memmap when cached) and its size."""

    ids: np.ndarray
    stats: SplitStats


@dataclass(frozen=True)
class EncodedCorpus:
    tokenizer: Tokenizer
    splits: dict[str, TokenSplit]  # train, valid, test (valid and test capped by eval_lines)
    directory: Path | None  # where the token files are; None when encoded in memory

    def stream(self, split: str, direction: str) -> np.ndarray:
        """The split's ids as one stream; reversed (a view) for a backward model."""
        ids = self.splits[split].ids
        return ids[::-1] if direction == "backward" else ids


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def corpus_key(source: CorpusSource) -> str:
    return _digest(
        {"format": CACHE_FORMAT_VERSION, "origin": source.origin, "sha256": source.sha256, "split": source.split_rule}
    )[:32]


def vocabulary_key(config: TrainConfig) -> str:
    fields = {name: getattr(config, name) for name in VOCABULARY_FIELDS}
    if config.level == "subword":
        fields["bpe_sample_mb"] = config.bpe_sample_mb
    return _digest(fields)[:32]


def tokenizer_key(tokenizer: Tokenizer) -> str:
    return _digest(tokenizer.to_dict())[:32]


def split_name(split: str, eval_lines: int) -> str:
    return f"{split}.first{eval_lines}" if split != "train" and eval_lines > 0 else split


def first_lines_chunks(chunks: Iterable[str], count: int) -> Iterator[str]:
    """The chunks of the first `count` lines (`str.splitlines` lines, as `first_lines`); all when 0."""
    if count <= 0:
        yield from chunks
        return
    left = count
    for chunk in chunks:
        lines = chunk.splitlines(keepends=True)
        if len(lines) >= left:
            yield "".join(lines[:left])
            return
        left -= len(lines)
        yield chunk


# ---------------------------------------------------------------- encoding


def encode_split(
    tokenizer: Tokenizer, chunks: Iterable[str], sink: Any, total_bytes: int, desc: str, progress: bool
) -> SplitStats:
    """Encode chunk by chunk into `sink` (a binary file, or a list of arrays); a bar shows MB/s."""
    tokens = chars = unknown = 0
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for ids, chunk_chars, chunk_bytes in encode_chunks(tokenizer, chunks):
            if isinstance(sink, list):
                sink.append(ids)
            else:
                sink.write(ids.tobytes())
            tokens += len(ids)
            chars += chunk_chars
            if tokenizer.unk_id is not None:
                unknown += int(np.count_nonzero(ids == tokenizer.unk_id))
            bar.update(chunk_bytes)
    return SplitStats(tokens=tokens, chars=chars, unknown=unknown)


def split_chunks(source: CorpusSource, split: str, eval_lines: int) -> Iterator[str]:
    return first_lines_chunks(source.chunks(split), eval_lines if split != "train" else 0)


def encode_in_memory(config: TrainConfig, source: CorpusSource, tokenizer: Tokenizer | None) -> EncodedCorpus:
    """Every split encoded into arrays, nothing written (a corpus the caller holds as text)."""
    tokenizer = tokenizer or build_tokenizer_from(config, source)
    splits = {}
    for split in SPLITS:
        parts: list[np.ndarray] = []
        stats = encode_split(tokenizer, split_chunks(source, split, config.eval_lines), parts, 0, split, False)
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=token_dtype(tokenizer.vocab_size))
        splits[split] = TokenSplit(ids, stats)
    return EncodedCorpus(tokenizer, splits, None)


# ---------------------------------------------------------------- the files


def read_marker(bin_path: Path, dtype: type[np.unsignedinteger]) -> SplitStats | None:
    """The split's figures if its files are whole: a marker that matches the .bin's size."""
    try:
        meta = json.loads(bin_path.with_suffix(".json").read_text(encoding="utf-8"))
        if meta.get("format") != CACHE_FORMAT_VERSION or meta.get("dtype") != np.dtype(dtype).name:
            return None
        stats = SplitStats(tokens=int(meta["tokens"]), chars=int(meta["chars"]), unknown=int(meta["unknown"]))
        if bin_path.stat().st_size != stats.tokens * np.dtype(dtype).itemsize:
            return None
        return stats
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_split(bin_path: Path, tokenizer: Tokenizer, chunks: Iterable[str], total: int, progress: bool) -> SplitStats:
    """Encode to a temporary file, rename it into place, then write the marker."""
    fd, tmp = tempfile.mkstemp(dir=bin_path.parent, prefix=f".{bin_path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # mkstemp makes it private; the token files are as readable as the corpus cache
    try:
        with os.fdopen(fd, "wb") as f:
            stats = encode_split(tokenizer, chunks, f, total, f"encode {bin_path.stem}", progress)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, bin_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dtype = token_dtype(tokenizer.vocab_size)
    marker = {"format": CACHE_FORMAT_VERSION, "dtype": np.dtype(dtype).name, **stats.__dict__}
    write_json_atomic(bin_path.with_suffix(".json"), marker)
    return stats


def open_ids(bin_path: Path, stats: SplitStats, dtype: type[np.unsignedinteger]) -> np.ndarray:
    if stats.tokens == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(bin_path, dtype=dtype, mode="r", shape=(stats.tokens,))


def cached_tokenizer(config: TrainConfig, source: CorpusSource, corpus_dir: Path, may_build: bool) -> Tokenizer:
    path = corpus_dir / f"tokenizer-{vocabulary_key(config)}.json"
    if path.is_file():
        try:
            return tokenizer_from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TokenizerError):
            pass  # damaged: learn it again
    if not may_build:
        raise FileNotFoundError(f"{path}: rank 0 did not write the tokenizer")
    tokenizer = build_tokenizer_from(config, source)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, tokenizer.to_dict())
    return tokenizer


def encode_cached(
    config: TrainConfig,
    source: CorpusSource,
    tokenizer: Tokenizer | None,
    cache_dir: Path,
    progress: bool,
    may_write: bool = True,
) -> EncodedCorpus:
    """The corpus's token files under `cache_dir`, encoded first where missing (when `may_write`)."""
    corpus_dir = cache_dir / TOKENS_DIR / corpus_key(source)
    if tokenizer is None:
        tokenizer = cached_tokenizer(config, source, corpus_dir, may_write)
    directory = corpus_dir / tokenizer_key(tokenizer)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    splits = {}
    for split in SPLITS:
        bin_path = directory / f"{split_name(split, config.eval_lines)}.bin"
        stats = read_marker(bin_path, dtype)
        if stats is None:
            if not may_write:
                raise FileNotFoundError(f"{bin_path}: rank 0 did not write it")
            chunks = split_chunks(source, split, config.eval_lines)
            total = source.split_bytes(split) if split == "train" or not config.eval_lines else 0
            stats = write_split(bin_path, tokenizer, chunks, total, progress)
        splits[split] = TokenSplit(open_ids(bin_path, stats, dtype), stats)
    return EncodedCorpus(tokenizer, splits, directory)


def encoded_corpus(
    config: TrainConfig,
    source: CorpusSource,
    tokenizer: Tokenizer | None = None,
    cache_dir: Path | None = None,
    context: DistributedContext | None = None,
) -> EncodedCorpus:
    """The splits' ids: from the token cache (rank 0 encodes, the other ranks then open), or in memory."""
    context = context or DistributedContext()
    if cache_dir is None:
        return encode_in_memory(config, source, tokenizer)
    progress = config.progress and context.is_main
    if not context.enabled:
        return encode_cached(config, source, tokenizer, cache_dir, progress)
    encoded = encode_cached(config, source, tokenizer, cache_dir, progress) if context.is_main else None
    dist_util.barrier(context)
    return encoded or encode_cached(config, source, tokenizer, cache_dir, False, may_write=False)
