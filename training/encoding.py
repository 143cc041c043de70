"""A corpus to token ids chunk by chunk: the vocabulary learned from a stream, and fast encoders.

Every step sees one chunk (a few MB of whole lines) at a time, so memory does not grow
with the corpus: characters are counted into one array over all code points, words
into a Counter (it grows with the distinct words, not the text), and byte-level BPE
learns its merges from an iterator over the train split, or over an evenly spread
sample of it (`bpe_sample_mb`) when the split is larger.

The encoders give the ids `Tokenizer.encode` gives, chunk by chunk (a chunk ends at a
line end, where no level's tokens straddle): the char level through a lookup table of
code points, the whitespace word level through one `str.split` of the chunk, the
subword level through `SubwordTokenizer.encode_ids`; anything else through `encode`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from model.subword import SubwordTokenizer
from model.tokenizer import EOS, CharTokenizer, Tokenizer, WordTokenizer, normalize
from training.config import TrainConfig
from training.data import CorpusSource

CODE_POINTS = 0x110000
Encoder = Callable[[str], np.ndarray]


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """uint16 where the vocabulary fits (half the disk and page cache), else uint32."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def code_points(text: str) -> np.ndarray:
    """The NFC code points of `text` (uint8 for ASCII text, a quarter of the memory; else uint32)."""
    if text.isascii():  # already NFC, one byte per character
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(normalize(text).encode("utf-32-le"), dtype=np.uint32)


def build_tokenizer_from(config: TrainConfig, source: CorpusSource) -> Tokenizer:
    """The level's vocabulary from the train split only, read chunk by chunk."""
    max_size = config.max_vocab or None
    if config.level == "char":
        counts = np.zeros(CODE_POINTS, dtype=np.int64)
        for chunk in source.chunks("train"):
            seen_here = np.bincount(code_points(chunk))
            counts[: len(seen_here)] += seen_here
        seen = np.flatnonzero(counts)
        return CharTokenizer.from_counts(
            Counter({chr(cp): int(counts[cp]) for cp in seen}), max_size=max_size, min_freq=config.min_freq
        )
    if config.level == "subword":
        return SubwordTokenizer.train(bpe_sample(source, config.bpe_sample_mb), vocab_size=config.max_vocab)
    probe = WordTokenizer(["<unk>", EOS], lowercase=config.lowercase, pretokenizer=config.pretokenizer)
    words: Counter[str] = Counter()
    for chunk in source.chunks("train"):
        words.update(word_tokens(probe, chunk))
    return WordTokenizer.from_counts(
        words, max_size, config.min_freq, lowercase=config.lowercase, pretokenizer=config.pretokenizer
    )


def bpe_sample(source: CorpusSource, sample_mb: float) -> Iterator[str]:
    """The train split's lines, or those of evenly spread chunks of it adding up to about `sample_mb` MB."""
    total, budget = source.split_bytes("train"), sample_mb * 1e6
    taken = seen = 0
    for chunk in source.chunks("train"):
        size = utf8_bytes(chunk)
        seen += size
        if sample_mb <= 0 or total <= budget or taken < budget * seen / total:  # a chunk whenever the quota allows
            taken += size
            yield from chunk.splitlines(keepends=True)


def word_tokens(tokenizer: WordTokenizer, text: str) -> list[str]:
    """`tokenizer.split(text)`; for the whitespace level one `str.split` of the whole chunk."""
    if tokenizer.pretokenizer != "whitespace":
        return tokenizer.split(text)
    text = normalize(text)
    if tokenizer.lowercase:
        text = text.lower()
    # A line is split on whitespace and ends in <eos>: the same as splitting the chunk with
    # each "\n" made a whitespace-delimited <eos> (a literal "<eos>" word is <eos> either way).
    return text.replace("\n", f" {EOS} ").split()


class _Vocabulary(dict[str, int]):
    """token -> id, with <unk>'s id for every other token (a C-speed lookup through map)."""

    def __init__(self, tokenizer: WordTokenizer) -> None:
        super().__init__(tokenizer.index)
        self.unk_id = tokenizer.unk_id

    def __missing__(self, key: str) -> int:
        return self.unk_id


def chunk_encoder(tokenizer: Tokenizer) -> Encoder:
    """A function from a chunk of text to its ids, the ids `tokenizer.encode` gives."""
    dtype = token_dtype(tokenizer.vocab_size)
    if isinstance(tokenizer, CharTokenizer):
        table = np.full(CODE_POINTS, tokenizer.unk_id, dtype=dtype)
        for token_id, token in enumerate(tokenizer.tokens):
            if len(token) == 1:
                table[ord(token)] = token_id
        return lambda text: table[code_points(text)]
    if isinstance(tokenizer, WordTokenizer):
        vocabulary = _Vocabulary(tokenizer)

        def encode_words(text: str) -> np.ndarray:
            words = word_tokens(tokenizer, text)
            return np.fromiter(map(vocabulary.__getitem__, words), dtype=dtype, count=len(words))

        return encode_words
    if isinstance(tokenizer, SubwordTokenizer):
        return lambda text: np.array(tokenizer.encode_ids(text), dtype=dtype)
    return lambda text: np.array(tokenizer.encode(text).ids, dtype=dtype)


def count_chars(text: str) -> int:
    """Characters of the NFC text: what bits per character divide by."""
    return len(text) if text.isascii() else len(normalize(text))


def utf8_bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def encode_chunks(tokenizer: Tokenizer, chunks: Iterable[str]) -> Iterator[tuple[np.ndarray, int, int]]:
    """(ids, NFC characters, UTF-8 bytes) of each chunk."""
    encode = chunk_encoder(tokenizer)
    one_per_char = isinstance(tokenizer, CharTokenizer)  # a char level's tokens are the NFC characters
    for chunk in chunks:
        ids = encode(chunk)
        yield ids, len(ids) if one_per_char else count_chars(chunk), utf8_bytes(chunk)
