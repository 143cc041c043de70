"""The tokenizer interface, and the character- and word-level tokenizers.

Every tokenizer is serialised to a JSON dict inside the checkpoint. Char and word
map unknown input to `<unk>` and report it rather than failing; the subword level
(model/subword.py) has no unknown input at all. Every level knows a *boundary*
token: the token that ends a line (`<eos>` for words, `"\\n"` for characters and
subwords). A fresh state is primed with it, so the first token of a text is
conditioned on "start of line", as during training (KenLM's `<s>`).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from model.pretokenize import PRETOKENIZERS, Pretokenizer, join_word, split_line

UNK = "<unk>"
EOS = "<eos>"
TOKENIZER_FORMAT_VERSION = 1

TokenizerKind = Literal["char", "word", "subword"]


class TokenizerError(ValueError):
    """A tokenizer file or dict that cannot be used."""


@dataclass(frozen=True)
class Encoding:
    """Token ids of a text, with the surface form of each and whether it was unknown."""

    ids: list[int]
    tokens: list[str]
    unknown: list[bool]


def normalize(text: str) -> str:
    """NFC, so a precomposed and a decomposed Hangul syllable are the same token."""
    return unicodedata.normalize("NFC", text)


class Tokenizer:
    """What every level offers the model, the trainer and the service."""

    kind: TokenizerKind
    tokens: list[str]  # how each id is shown (its text, or a readable stand-in)
    unk_id: int | None  # the token unknown input becomes; None where no input is unknown
    eos_id: int | None = None  # a token that ends a line and is generated as one (word models' <eos>)
    separator = ""  # what stands between two tokens in the text, where tokens are whole words (" ")
    boundary_text = "\n"  # the text that encodes to the boundary token alone
    lowercase = False  # whether the text is lower-cased before it is cut

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def boundary_id(self) -> int:
        """The end-of-line token, also used to prime a fresh state."""
        raise NotImplementedError

    def encode(self, text: str) -> Encoding:
        raise NotImplementedError

    def piece(self, token_id: int, previous_id: int | None) -> str:
        """Text that `token_id` adds after `previous_id` (None at the start of a text)."""
        raise NotImplementedError

    def piece_bytes(self, token_id: int, previous_id: int | None) -> bytes:
        """UTF-8 bytes that `token_id` adds after `previous_id`; may be part of a character."""
        return self.piece(token_id, previous_id).encode("utf-8")

    @property
    def partial_ids(self) -> frozenset[int]:
        """Tokens whose bytes are not whole characters on their own (only byte-level subwords have any)."""
        return frozenset()

    def invalid_after(self, pending: bytes) -> frozenset[int]:
        """Tokens whose bytes cannot follow `pending`, the bytes of an unfinished character (none but for subwords)."""
        return frozenset()

    def split_unfinished(self, text: str) -> tuple[str, str]:
        """`text` cut into what can be tokenised now and a tail that more text could still change.

        A character is a token as it arrives: nothing waits (the word and subword levels
        keep an unfinished word).
        """
        return text, ""

    def joins_previous(self, previous_id: int, text: str) -> bool:
        """Whether `text`, tokenised after the token `previous_id`, would change that token (none but for chars)."""
        return False

    def characters(self, ids: list[int]) -> int | None:
        """How many characters `ids` spell, where the tokens say (None for words: `<unk>` hides its text)."""
        return None

    def source_offsets(self, text: str, encoding: Encoding) -> list[int]:
        """Where each token of `encoding` (of `text`) starts in `text` as sent, in characters."""
        return self.text_offsets(encoding.ids)

    def text_offsets(self, ids: Iterable[int], previous_id: int | None = None) -> list[int]:
        """Where each token starts in `decode(ids, previous_id)`, in characters."""
        offsets, position = [], 0
        for token_id in ids:
            offsets.append(position)
            position += len(self.piece(token_id, previous_id))
            previous_id = token_id
        return offsets

    def decode(self, ids: Iterable[int], previous_id: int | None = None) -> str:
        pieces = []
        for token_id in ids:
            pieces.append(self.piece(token_id, previous_id))
            previous_id = token_id
        return "".join(pieces)

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})")


class VocabularyTokenizer(Tokenizer):
    """A list of surface tokens, one id each, with `<unk>` for the rest (char and word)."""

    unk_id: int

    def __init__(self, tokens: list[str]) -> None:
        if len(set(tokens)) != len(tokens):
            raise TokenizerError("vocabulary has duplicate tokens")
        if UNK not in tokens:
            raise TokenizerError(f"vocabulary lacks {UNK}")
        self.tokens = tokens
        self.index = {token: i for i, token in enumerate(tokens)}
        self.unk_id = self.index[UNK]

    def split(self, text: str) -> list[str]:
        """Surface tokens of `text` (after normalisation)."""
        raise NotImplementedError

    def encode(self, text: str) -> Encoding:
        tokens = self.split(text)
        ids = [self.index.get(token, self.unk_id) for token in tokens]
        unknown = [i == self.unk_id for i in ids]
        return Encoding(ids=ids, tokens=tokens, unknown=unknown)

    def source_offsets(self, text: str, encoding: Encoding) -> list[int]:
        """Each surface token found in `text` left to right (normalised text may differ: then the running position)."""
        offsets, position = [], 0
        for surface in encoding.tokens:
            written = "\n" if surface == EOS else surface  # <eos> is a line break in the text
            found = text.find(written, position)
            if found < 0:  # NFC or lower-casing changed the surface form: keep the running position
                found = position
            offsets.append(found)
            position = found + len(written)
        return offsets

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": TOKENIZER_FORMAT_VERSION, "kind": self.kind, "tokens": self.tokens}


class CharTokenizer(VocabularyTokenizer):
    """Unicode code points after NFC normalisation; `<unk>` for unseen characters."""

    kind: TokenizerKind = "char"

    @classmethod
    def build(cls, text: str, max_size: int | None = None, min_freq: int = 1) -> CharTokenizer:
        return cls.from_counts(Counter(normalize(text)), max_size, min_freq)

    @classmethod
    def from_counts(cls, counts: Counter[str], max_size: int | None = None, min_freq: int = 1) -> CharTokenizer:
        """The vocabulary of character counts (of NFC text), counted by the caller, e.g. chunk by chunk."""
        return cls([UNK, *_select_vocabulary(counts, max_size, min_freq, reserved=1)])

    @property
    def boundary_id(self) -> int:
        return self.index.get("\n", self.unk_id)

    def split(self, text: str) -> list[str]:
        return list(normalize(text))

    def piece(self, token_id: int, previous_id: int | None) -> str:
        self.check_id(token_id)
        return "\ufffd" if token_id == self.unk_id else self.tokens[token_id]

    def joins_previous(self, previous_id: int, text: str) -> bool:
        """Whether NFC would merge `text`'s start into the character `previous_id` ("e" and a combining acute)."""
        previous = self.tokens[previous_id]
        if len(previous) != 1 or not text:
            return False
        return normalize(previous + text) != previous + normalize(text)

    def characters(self, ids: list[int]) -> int | None:
        return len(ids)  # a token is one character (<unk> stands for one)


class WordTokenizer(VocabularyTokenizer):
    """Words of each line (model/pretokenize.py says how a line is cut); a line break is `<eos>`."""

    kind: TokenizerKind = "word"
    eos_id: int
    separator = " "
    boundary_text = EOS

    def __init__(self, tokens: list[str], lowercase: bool = False, pretokenizer: Pretokenizer = "whitespace") -> None:
        super().__init__(tokens)
        if EOS not in self.index:
            raise TokenizerError(f"vocabulary lacks {EOS}")
        if pretokenizer not in PRETOKENIZERS:
            raise TokenizerError(f"unknown pretokenizer {pretokenizer!r} (expected one of {', '.join(PRETOKENIZERS)})")
        self.eos_id = self.index[EOS]
        self.lowercase = lowercase
        self.pretokenizer: Pretokenizer = pretokenizer

    @classmethod
    def build(
        cls,
        text: str,
        max_size: int | None = None,
        min_freq: int = 1,
        lowercase: bool = False,
        pretokenizer: Pretokenizer = "whitespace",
    ) -> WordTokenizer:
        probe = cls([UNK, EOS], lowercase=lowercase, pretokenizer=pretokenizer)
        counts = Counter(probe.split(text))
        return cls.from_counts(counts, max_size, min_freq, lowercase, pretokenizer)

    @classmethod
    def from_counts(
        cls,
        counts: Counter[str],
        max_size: int | None = None,
        min_freq: int = 1,
        lowercase: bool = False,
        pretokenizer: Pretokenizer = "whitespace",
    ) -> WordTokenizer:
        """The vocabulary of word counts (of `split` output), counted by the caller, e.g. chunk by chunk."""
        counts = Counter({token: n for token, n in counts.items() if token not in (UNK, EOS)})
        vocabulary = [UNK, EOS, *_select_vocabulary(counts, max_size, min_freq, reserved=2)]
        return cls(vocabulary, lowercase, pretokenizer)

    @property
    def boundary_id(self) -> int:
        return self.eos_id

    def split_unfinished(self, text: str) -> tuple[str, str]:
        """The text after the last whitespace may be an unfinished word: it waits."""
        cut = len(text)
        while cut > 0 and not text[cut - 1].isspace():
            cut -= 1
        return text[:cut], text[cut:]

    def split(self, text: str) -> list[str]:
        text = normalize(text)
        if self.lowercase:
            text = text.lower()
        tokens: list[str] = []
        lines = text.split("\n")
        for number, line in enumerate(lines):
            tokens.extend(split_line(line, self.pretokenizer))
            if number < len(lines) - 1:  # a line break, not the text's unfinished last line
                tokens.append(EOS)
        return tokens

    def piece(self, token_id: int, previous_id: int | None) -> str:
        self.check_id(token_id)
        if token_id == self.eos_id:
            return "\n"
        at_line_start = previous_id is None or previous_id == self.eos_id
        if token_id == self.unk_id and self.pretokenizer == "punctuation":
            # Which spacing the unknown word had is lost with it: one space, as between words.
            return UNK if at_line_start else " " + UNK
        return join_word(self.tokens[token_id], at_line_start, self.pretokenizer)

    def to_dict(self) -> dict[str, Any]:
        data = {**super().to_dict(), "lowercase": self.lowercase}
        if self.pretokenizer != "whitespace":  # a whitespace tokenizer writes what it always wrote
            data["pretokenizer"] = self.pretokenizer
        return data


def _select_vocabulary(counts: Counter[str], max_size: int | None, min_freq: int, reserved: int) -> list[str]:
    """Most frequent first (ties alphabetical), cut by `min_freq` and `max_size` (specials included)."""
    ranked = sorted(
        (token for token, n in counts.items() if n >= min_freq and token != UNK), key=lambda t: (-counts[t], t)
    )
    if max_size is not None:
        ranked = ranked[: max(0, max_size - reserved)]
    return ranked
