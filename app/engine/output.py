"""The output stage: generated token ids become the text a client may see.

Two things hold text back. A token may carry only part of a UTF-8 character (a
subword model's byte tokens), so its bytes go through an incremental decoder and a
character is released once all its bytes are out. And text that could still grow into
a stop string is held until it cannot, so a stop string is never partly streamed.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from app.engine.types import FinishReason
from model.tokenizer import Tokenizer


class StopStringMatcher:
    """Accumulates generated text and decides what may be shown to the client.

    Text that could still grow into a stop string is held back, so a stop string is
    never partly streamed; once a stop string appears, the text before it is final.
    """

    def __init__(self, stop: tuple[str, ...], include: bool = False) -> None:
        self.stop = tuple(s for s in stop if s)
        self.include = include  # the text ends after the stop string instead of before it
        self.text = ""
        self.released = 0  # text[:released] has been handed out
        self.stopped: str | None = None  # the stop string that ended the text

    def push(self, piece: str) -> str:
        """Append `piece`; return the newly releasable text (may be empty)."""
        self.text += piece
        found = self._first_stop()
        if found is not None:
            start, self.stopped = found
            self.text = self.text[: start + len(self.stopped) if self.include else start]
            return self.flush()
        safe = len(self.text) - self._held_back()
        out = self.text[self.released : safe]
        self.released = safe
        return out

    def flush(self) -> str:
        """Release everything still held back (the generation has ended)."""
        out = self.text[self.released :]
        self.released = len(self.text)
        return out

    def _first_stop(self) -> tuple[int, str] | None:
        """Where the first stop string starts, and which it is."""
        # Released text never starts a stop string (it was held back), so search only the rest.
        hits = [(i, s) for s, i in ((s, self.text.find(s, self.released)) for s in self.stop) if i >= 0]
        return min(hits, key=lambda hit: hit[0]) if hits else None

    def _held_back(self) -> int:
        """Length of the longest suffix of the unreleased text that is a proper prefix of a stop string."""
        tail = self.text[self.released :]
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(tail)), longest, -1):
                if tail.endswith(s[:n]):
                    longest = n
                    break
        return longest


@dataclass(frozen=True)
class Released:
    """What one token releases: its own piece (for display), the new visible text, and the finish if it ended."""

    piece: str
    text: str
    finish: FinishReason | None


class TextOutput:
    """One sequence's detokeniser: token ids in, releasable text out (bytes, then stop strings)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        stop: tuple[str, ...],
        previous: int,
        max_tokens: int,
        carried: bytes | None = None,
        stop_ids: tuple[int, ...] = (),
        include_stop: bool = False,
    ) -> None:
        """`carried`: a session's bytes of a character begun earlier; with it, an unfinished
        character at the end is held (`pending_bytes`), not released as U+FFFD. `stop_ids`
        end the text, their own text hidden unless `include_stop` (which also keeps a stop
        string at the end of the text)."""
        self.tokenizer = tokenizer
        self.previous = previous  # the token before the next one (a word's space depends on it)
        self.max_tokens = max_tokens
        self.count = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._hold = carried is not None
        self._utf8.decode(carried or b"")  # the start of a character: nothing to release yet
        self._stop = StopStringMatcher(stop, include_stop)
        self.stop_ids = frozenset(stop_ids)
        self.include_stop = include_stop
        self.stop_reason: int | str | None = None  # the stop token id or stop string that ended the text

    @property
    def holds_back(self) -> bool:
        """Whether text may be held back at some point: stop strings (a partial UTF-8 character, too, but at a
        dead end that would be lost only as the U+FFFD it flushes to)."""
        return bool(self._stop.stop)

    def push(self, token_id: int, eos_id: int | None, end: FinishReason | None = None) -> Released:
        """Take the next token; `eos_id` ends the text without showing its piece (a line end).

        `end` ends the text after this token for a reason the caller knows: a constraint it
        completes ("stop"), or one that no token of the vocabulary can continue ("length").
        """
        previous, self.previous = self.previous, token_id
        self.count += 1
        piece = self.tokenizer.piece(token_id, previous)
        if token_id == eos_id:
            return Released(piece, self._flush(), "eos")
        if token_id in self.stop_ids and not self.include_stop:
            self.stop_reason = token_id
            return Released(piece, self._flush(), "stop")
        text = self._stop.push(self._utf8.decode(self.tokenizer.piece_bytes(token_id, previous)))
        if self._stop.stopped is not None:
            self.stop_reason = self._stop.stopped
            return Released(piece, text, "stop")
        if token_id in self.stop_ids:
            self.stop_reason = token_id
            return Released(piece, text + self._flush(), "stop")
        if end is not None:
            return Released(piece, text + self._flush(), end)
        if self.count >= self.max_tokens:
            return Released(piece, text + self._flush(), "length")
        return Released(piece, text, None)

    def end(self, token_id: int | None, finish: FinishReason) -> Released:
        """End the text with `finish`: `token_id` (a constraint's end token) adds no text; None when no token came."""
        piece = ""
        if token_id is not None:
            previous, self.previous = self.previous, token_id
            self.count += 1
            piece = self.tokenizer.piece(token_id, previous)
        return Released(piece, self._flush(), finish)

    @property
    def pending_bytes(self) -> bytes:
        """The bytes of a character not yet complete (a byte-level token's lead byte, say)."""
        held: bytes = self._utf8.getstate()[0]
        return held

    def _flush(self) -> str:
        """Everything held back: an unfinished character (as U+FFFD) and a possible stop string's start."""
        tail = "" if self._hold else self._utf8.decode(b"", final=True)
        text = self._stop.push(tail) if tail else ""
        return text if self._stop.stopped is not None else text + self._stop.flush()
