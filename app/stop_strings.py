"""Stop strings on a growing text: release only what can no longer become a stop string."""

from __future__ import annotations


class StopStringMatcher:
    """Accumulates generated text and decides what may be shown to the client.

    Text that could still grow into a stop string is held back, so a stop string is
    never partly streamed; once a stop string appears, the text before it is final.
    """

    def __init__(self, stop: tuple[str, ...]) -> None:
        self.stop = tuple(s for s in stop if s)
        self.text = ""
        self.released = 0  # text[:released] has been handed out
        self.stopped = False

    def push(self, piece: str) -> str:
        """Append `piece`; return the newly releasable text (may be empty)."""
        self.text += piece
        start = self._first_stop()
        if start is not None:
            self.stopped = True
            self.text = self.text[:start]
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

    def _first_stop(self) -> int | None:
        # Released text never starts a stop string (it was held back), so search only the rest.
        hits = [i for i in (self.text.find(s, self.released) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

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
