"""How the word level cuts a line into words: on whitespace, or at punctuation too.

`whitespace` is the PTB/WikiText convention: words are what `str.split()` returns and
the spaces between them are implied (one space, none at a line start). It cannot
tell `word,` from `word`, so on raw text every word that touches punctuation is a
vocabulary entry of its own and most of them are unknown.

`punctuation` cuts runs of letters, marks and digits apart from each punctuation
or symbol character, Unicode-aware (Hangul syllables are letters, so a Korean word
keeps its particle but loses its `!`). Spacing is recorded, not guessed: a single
space before a word or symbol belongs to that token (`" the"`, `","`), as in GPT-2's
byte-level BPE (Radford et al. 2019), and any other whitespace (runs, tabs) is a
token of its own. The text is the concatenation of its tokens.
"""

from __future__ import annotations

from typing import Literal

import regex

Pretokenizer = Literal["whitespace", "punctuation"]
PRETOKENIZERS: tuple[Pretokenizer, ...] = ("whitespace", "punctuation")

# Letters, combining marks and digits make words; every other visible character
# stands alone; one leading space is kept with the token it precedes.
_PUNCTUATION_TOKEN = regex.compile(r" ?[\p{L}\p{M}\p{N}]+| ?[^\s\p{L}\p{M}\p{N}]|\s")


def split_line(line: str, pretokenizer: Pretokenizer) -> list[str]:
    """The word tokens of one line (no line break in it)."""
    if pretokenizer == "whitespace":
        return line.split()
    tokens: list[str] = _PUNCTUATION_TOKEN.findall(line)
    return tokens


def join_word(word: str, at_line_start: bool, pretokenizer: Pretokenizer) -> str:
    """The text a word adds to the line it continues."""
    if pretokenizer == "punctuation" or at_line_start:
        return word
    return " " + word
