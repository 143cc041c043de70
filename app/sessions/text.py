"""Text fed to a session in pieces is tokenised as if it had come in one piece.

A word model's text after the last whitespace may be an unfinished word, so it is kept
as the session's `pending_text` and put in front of the next piece. It is tokenised
when whitespace follows it, when a call says `flush`, or when the session generates.
`next-token` answers as if it were flushed but leaves it pending. A subword model keeps
the whitespace before that word pending too (its tokens carry their leading space). A
char model has no pending text: each character is a token as it arrives.
"""

from __future__ import annotations

import unicodedata

from app.errors import InvalidRequest
from model.tokenizer import Tokenizer


def split_unfinished(tokenizer: Tokenizer, text: str, flush: bool) -> tuple[str, str]:
    """`text` cut into what can be tokenised now and the unfinished word kept for later (the tokenizer says where)."""
    return (text, "") if flush else tokenizer.split_unfinished(text)


def check_no_join(tokenizer: Tokenizer, pending_id: int, text: str) -> None:
    """422 when a char session's piece would merge with the character before it under NFC.

    A char model reads NFC code points, so "e" then a combining acute is one character
    "é" when sent together, but the "e" has already been scored (and counted) when it
    comes in an earlier piece. Rather than score the two halves differently from the
    whole text, such a piece is refused; it only happens with decomposed input.
    """
    if tokenizer.joins_previous(pending_id, text):
        previous, first = tokenizer.tokens[pending_id], text[0]
        raise InvalidRequest(
            f"text starts with U+{ord(first):04X} {unicodedata.name(first, 'unnamed')}, which joins the previous "
            f"piece's last character {previous!r} into one character under NFC: send a character together "
            "with the combining marks that follow it",
            field="text",
        )
