"""The subword level: byte-level BPE from Hugging Face `tokenizers`, stored in its own JSON.

Byte-level BPE (Radford et al. 2019, GPT-2) starts from the 256 byte values and merges
frequent pairs, so every text is some sequence of vocabulary tokens: nothing is ever
unknown and the bytes of the tokens are exactly the UTF-8 of the (NFC) text. The price
is that a token may hold part of a character (a rare Hangul syllable is three byte
tokens); `piece_bytes` gives a token's bytes, `piece` a displayable text for it.

The pipeline is NFC, then "\\n" cut out as a pre-token of its own (so the line end is
always the single byte token that primes a fresh state, as at the char level), then
GPT-2's pre-tokenizer regex over the bytes. The library's own JSON of the whole
pipeline lives in tokenizer.json under "tokenizer"; nothing is pickled.
"""

from __future__ import annotations

import codecs
import json
import unicodedata
from collections.abc import Iterable
from functools import cache
from itertools import chain
from typing import Any

import regex
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from model.tokenizer import TOKENIZER_FORMAT_VERSION, Encoding, Tokenizer, TokenizerError, TokenizerKind

LINE_END = "\n"
MIN_VOCAB = 257  # the 256 bytes and at least one merge
PIECE_CACHE_SIZE = 1 << 20  # distinct pre-tokens remembered by encode_ids before it starts afresh

# The pipeline's pre-tokenization in Python, for `encode_ids`: GPT-2's pattern (what
# ByteLevel(use_regex=True) applies) with the line end cut out first, as the Split does
# ("\n" is a match of its own and no whitespace run takes it).
_PIECES = regex.compile(r"""\n|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|[^\S\n]+(?!\S)|[^\S\n]+""")


@cache
def byte_symbols() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte value (as byte-level BPE spells tokens) -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:  # control bytes and space move past U+00FF, in order
            symbols[chr(256 + shifted)] = b
            shifted += 1
    return symbols


def readable(data: bytes) -> str:
    """`data` as text; bytes that are not (yet) a whole UTF-8 character are shown as <0xAB>."""
    text = data.decode("utf-8", errors="surrogateescape")  # each stray byte b -> U+DC00 + b
    return "".join(f"<0x{ord(c) - 0xDC00:02X}>" if "\udc80" <= c <= "\udcff" else c for c in text)


def _whole_characters(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _known_to_python(text: str) -> bool:
    """Whether Python's Unicode tables know every character of `text` (NFC and \\p{L} agree with the library's)."""
    return text.isascii() or not any(unicodedata.category(c) == "Cn" for c in set(text))


@cache
def _byte_spelling() -> dict[int, str]:
    """str.translate table: a byte (as a latin-1 character) -> its byte-level BPE symbol."""
    return {byte: symbol for symbol, byte in byte_symbols().items()}


def new_backend() -> Backend:
    """An untrained byte-level BPE pipeline (see the module docstring)."""
    backend = Backend(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(LINE_END, "isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


class SubwordTokenizer(Tokenizer):
    """Byte-level BPE: no unknown token (`unk_id` is None) and exact round trips of any text."""

    kind: TokenizerKind = "subword"

    def __init__(self, backend: Backend) -> None:
        symbols = byte_symbols()
        vocabulary = backend.get_vocab()  # token -> id
        missing = [symbol for symbol in symbols if symbol not in vocabulary]
        if missing:
            raise TokenizerError(f"subword vocabulary lacks {len(missing)} of the 256 byte tokens")
        if sorted(vocabulary.values()) != list(range(len(vocabulary))):
            raise TokenizerError("subword vocabulary ids are not 0..size-1")
        self.backend = backend
        self._invalid: dict[bytes, frozenset[int]] = {}  # invalid_after, by the pending bytes (a few kinds)
        spelled = sorted(vocabulary, key=vocabulary.__getitem__)
        try:
            self.token_bytes = [bytes(symbols[c] for c in token) for token in spelled]
        except KeyError as exc:
            raise TokenizerError(f"subword token spelled with {exc} is not byte-level BPE") from exc
        self.tokens = [readable(b) for b in self.token_bytes]
        self._partial_ids = frozenset(i for i, b in enumerate(self.token_bytes) if not _whole_characters(b))
        self.unk_id = None
        self.line_end_id = vocabulary[next(s for s, b in symbols.items() if b == ord(LINE_END))]
        self._pieces: dict[str, tuple[int, ...]] = {}  # encode_ids' cache: pre-token -> its ids
        if self.backend.encode(LINE_END).ids != [self.line_end_id]:
            raise TokenizerError("subword tokenizer does not encode a line end as its single byte token")

    @classmethod
    def train(cls, lines: Iterable[str], vocab_size: int) -> SubwordTokenizer:
        """Learn `vocab_size` tokens (the 256 bytes included) from `lines` (with their line ends)."""
        if vocab_size < MIN_VOCAB:
            raise TokenizerError(f"a subword vocabulary needs at least {MIN_VOCAB} tokens (the 256 bytes and a merge)")
        backend = new_backend()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        backend.train_from_iterator(lines, trainer)
        return cls(backend)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubwordTokenizer:
        pipeline = data.get("tokenizer")
        if not isinstance(pipeline, dict):
            raise TokenizerError("'tokenizer' must be the tokenizers library's JSON object")
        try:
            backend = Backend.from_str(json.dumps(pipeline))
        except Exception as exc:  # the library raises a bare Exception on a bad file
            raise TokenizerError(f"not a tokenizers JSON pipeline: {exc}") from exc
        return cls(backend)

    @property
    def boundary_id(self) -> int:
        return self.line_end_id

    @property
    def partial_ids(self) -> frozenset[int]:
        return self._partial_ids

    def encode(self, text: str) -> Encoding:
        # A line end is a pre-token of its own and NFC never joins across it, so the lines
        # can be encoded apart, in parallel: a corpus is much faster so than as one string.
        lines = self.backend.encode_batch(text.splitlines(keepends=True))
        ids = [i for line in lines for i in line.ids]
        return Encoding(ids=ids, tokens=[self.tokens[i] for i in ids], unknown=[False] * len(ids))

    def split_unfinished(self, text: str) -> tuple[str, str]:
        """An unfinished last word waits, with the whitespace before it: BPE merges a space with the word after it."""
        cut = len(text)
        while cut > 0 and not text[cut - 1].isspace():
            cut -= 1
        while cut > 0 and text[cut - 1].isspace():
            cut -= 1
        return text[:cut], text[cut:]

    def characters(self, ids: list[int]) -> int | None:
        return len(self.decode(ids))  # the text the bytes spell

    def encode_ids(self, text: str) -> list[int]:
        """The ids `encode` gives, several times faster on a corpus: each distinct pre-token is merged once.

        BPE merges within a pre-token only, so a pre-token's ids never depend on its
        neighbours. The pre-tokens are cut here by the pipeline's own pattern (checked to
        cut alike on every code point Python's tables know); a text with a character they
        do not know (newer than its Unicode version) is left to the library.
        """
        if not _known_to_python(text):
            return self.encode(text).ids
        if len(self._pieces) > PIECE_CACHE_SIZE:
            self._pieces.clear()
        pieces, model, spelling = self._pieces, self.backend.model, _byte_spelling()

        def merged(piece: str) -> tuple[int, ...]:
            found = pieces.get(piece)
            if found is None:
                symbols = piece.encode("utf-8").decode("latin-1").translate(spelling)
                found = pieces[piece] = tuple(token.id for token in model.tokenize(symbols))
            return found

        return list(chain.from_iterable(map(merged, _PIECES.findall(unicodedata.normalize("NFC", text)))))

    def piece(self, token_id: int, previous_id: int | None) -> str:
        """The token's text; a token that holds part of a character shows those bytes as <0xAB>."""
        self.check_id(token_id)
        return self.tokens[token_id]

    def piece_bytes(self, token_id: int, previous_id: int | None) -> bytes:
        self.check_id(token_id)
        return self.token_bytes[token_id]

    def invalid_after(self, pending: bytes) -> frozenset[int]:
        """Tokens whose bytes cannot follow `pending` (the bytes of an unfinished character) in UTF-8.

        A byte-level model can sample a lead byte and then a token that does not continue
        it, which decodes to U+FFFD; masking these ids keeps generated text valid UTF-8. With
        nothing pending, the tokens that cannot start a text (a lone continuation byte).
        """
        found = self._invalid.get(pending)
        if found is None:
            found = self._invalid[pending] = _invalid_after(tuple(self.token_bytes), pending)
        return found

    def text_offsets(self, ids: Iterable[int], previous_id: int | None = None) -> list[int]:
        """Where each token starts in `decode(ids)`; a token inside a character starts where it does."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        offsets, position = [], 0
        for token_id in ids:
            offsets.append(position)  # the characters released so far; held bytes start the next one
            position += len(decoder.decode(self.piece_bytes(token_id, None)))
        return offsets

    def decode(self, ids: Iterable[int], previous_id: int | None = None) -> str:
        """The text of `ids`; bytes left without their character (a cut sequence) become U+FFFD."""
        data = b"".join(self.piece_bytes(i, None) for i in ids)
        return data.decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": TOKENIZER_FORMAT_VERSION,
            "kind": self.kind,
            "tokenizer": json.loads(self.backend.to_str()),
        }


def _invalid_after(token_bytes: tuple[bytes, ...], pending: bytes) -> frozenset[int]:
    return frozenset(i for i, data in enumerate(token_bytes) if not _continues(pending + data))


def _continues(data: bytes) -> bool:
    """Whether `data` is valid UTF-8 that some bytes could still complete.

    Python's incremental decoder holds an unfinished character back without checking
    all of it (b"\xed\xa7" waits, although after ED only 80-9F may follow: a surrogate
    otherwise), so the held tail is checked by completing it with continuation bytes.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        decoder.decode(data)
    except UnicodeDecodeError:
        return False
    tail: bytes = decoder.getstate()[0]
    if len(tail) < 2:
        return True  # nothing held, or a lead byte the decoder accepted
    length = 2 if tail[0] < 0xE0 else 3 if tail[0] < 0xF0 else 4
    try:
        (tail + b"\x80" * (length - len(tail))).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
