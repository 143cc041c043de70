"""Every tokenizer level in one place: rebuild any of them from its saved form.

model/tokenizer.py holds the base class and the char and word levels, model/subword.py the
subword level (built on the base); this module imports both, so neither imports the other.
"""

from __future__ import annotations

from typing import Any

from model.pretokenize import PRETOKENIZERS
from model.subword import SubwordTokenizer
from model.tokenizer import (
    TOKENIZER_FORMAT_VERSION,
    CharTokenizer,
    Tokenizer,
    TokenizerError,
    WordTokenizer,
)


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from `to_dict()` output; raise TokenizerError on anything odd."""
    if not isinstance(data, dict):
        raise TokenizerError("expected a JSON object")
    version = data.get("format_version")
    if version != TOKENIZER_FORMAT_VERSION:
        raise TokenizerError(f"unsupported tokenizer format_version {version!r} (expected {TOKENIZER_FORMAT_VERSION})")
    kind = data.get("kind")
    if kind == "subword":
        return SubwordTokenizer.from_dict(data)
    tokens = data.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise TokenizerError("'tokens' must be a list of strings")
    if kind == "char":
        return CharTokenizer(tokens)
    if kind == "word":
        pretokenizer = data.get("pretokenizer", "whitespace")  # absent in checkpoints written before it existed
        if pretokenizer not in PRETOKENIZERS:
            raise TokenizerError(f"unknown pretokenizer {pretokenizer!r} (expected one of {', '.join(PRETOKENIZERS)})")
        return WordTokenizer(tokens, lowercase=bool(data.get("lowercase", False)), pretokenizer=pretokenizer)
    raise TokenizerError(f"unknown tokenizer kind {kind!r} (expected 'char', 'word' or 'subword')")
