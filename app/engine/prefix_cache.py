"""The prefix-state cache: the recurrent state after a prompt's first tokens, kept across requests.

A recurrent model's whole history is its state, a few kilobytes, so a prompt that
starts like an earlier one (the same context with another answer, a growing
autocomplete prefix) can start from the earlier state and feed only the rest. The
engine keeps the state after every `INTERVAL` tokens of a prompt and at its end, keyed
by the token ids fed from a fresh start, with the log-probabilities of those tokens
(and their top alternatives) when they were computed, so an echoed or scored prompt
gets the same numbers from the cache as from feeding. One cache per engine, so per
loaded checkpoint: an entry can never answer for another model. Bounded in bytes;
least recently used entries go first. Touched only by the engine's worker thread.

Where a prompt leaves the ones fed before it (the end of a shared context, before each
answer of a multiple-choice item) is worth a state of its own: the cache remembers, for
each entry, the last few prompts that went on from it (`followers`), and `divergence`
tells the engine where a new prompt parts from them, so it keeps a state there too and
the next answer starts right after the context.
"""

from __future__ import annotations

import bisect
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from model.network import State, state_tensors

INTERVAL = 32  # tokens between cached states of one prompt: fewer forwards split vs. more of a prompt reused
FOLLOWERS = 16  # prompts remembered after each cached state, to find where a new one leaves them
ENTRY_OVERHEAD = 256  # bytes of Python bookkeeping counted per entry besides its tensors and key


@dataclass(frozen=True)
class CachedPrefix:
    """The state after a key's tokens (the last one pending) and what was measured on the way."""

    state: State  # single-row tensors
    logprobs: Tensor | None  # (len,) float64, log p of each key token, when computed
    top_ids: Tensor | None  # (len, k) the k most likely tokens at each position, when computed
    top_values: Tensor | None  # (len, k) float64
    nbytes: int

    @property
    def top_k(self) -> int:
        return 0 if self.top_ids is None else int(self.top_ids.shape[1])

    def serves(self, logprobs: bool, top: int) -> bool:
        return (self.logprobs is not None or not logprobs) and self.top_k >= top


class PrefixCache:
    def __init__(self, max_bytes: int, on_lookup: Callable[[int], None], on_bytes: Callable[[int], None]) -> None:
        self.max_bytes = max_bytes
        self._on_lookup = on_lookup  # tokens a lookup saved (0: a miss)
        self._on_bytes = on_bytes  # bytes held after a change
        self._entries: OrderedDict[tuple[int, ...], CachedPrefix] = OrderedDict()
        self._lengths: list[int] = []  # the distinct key lengths held, sorted
        self._length_counts: Counter[int] = Counter()
        self._followers: dict[tuple[int, ...], OrderedDict[tuple[int, ...], None]] = {}
        self.nbytes = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, key: tuple[int, ...], after: int, logprobs: bool, top: int) -> tuple[int, CachedPrefix] | None:
        """The longest cached prefix of `key` longer than `after` tokens that has what the caller needs."""
        found = None
        stop = bisect.bisect_right(self._lengths, len(key))
        for length in reversed(self._lengths[:stop]):
            if length <= after:
                break
            entry = self._entries.get(key[:length])
            if entry is not None and entry.serves(logprobs, top):
                self._entries.move_to_end(key[:length])
                found = (length, entry)
                break
        self._on_lookup(found[0] - after if found else 0)
        return found

    def divergence(self, key: tuple[int, ...], at: int) -> int:
        """How far `key` goes along the prompts that went on from its first `at` tokens (at least `at`)."""
        longest = at
        for follower in self._followers.get(key[:at], ()):
            same = at
            while same < min(len(key), len(follower)) and key[same] == follower[same]:
                same += 1
            longest = max(longest, same)
        return longest

    def put(
        self,
        key: tuple[int, ...],
        state: State,
        logprobs: Tensor | None,
        tops: tuple[Tensor, Tensor] | None,
        parent: int = 0,
    ) -> None:
        """Keep the state after `key` (unless an entry at least as complete is there already).

        `parent`: the length of the prefix the prompt went on from (its previous cached point).
        """
        followers = self._followers.setdefault(key[:parent], OrderedDict())
        followers[key] = None
        followers.move_to_end(key)
        if len(followers) > FOLLOWERS:
            followers.popitem(last=False)
        old = self._entries.get(key)
        top_k = 0 if tops is None else int(tops[0].shape[1])
        if old is not None and old.serves(logprobs is not None, top_k):
            self._entries.move_to_end(key)
            return
        tensors = [*state_tensors(state), *([] if logprobs is None else [logprobs]), *(tops or ())]
        nbytes = sum(t.numel() * t.element_size() for t in tensors) + 8 * len(key) + ENTRY_OVERHEAD
        if nbytes > self.max_bytes:
            return
        if old is not None:
            self._drop(key)
        ids, values = tops if tops is not None else (None, None)
        self._entries[key] = CachedPrefix(state, logprobs, ids, values, nbytes)
        self.nbytes += nbytes
        if self._length_counts[len(key)] == 0:
            bisect.insort(self._lengths, len(key))
        self._length_counts[len(key)] += 1
        while self.nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))  # the least recently used
        self._on_bytes(self.nbytes)

    def _drop(self, key: tuple[int, ...]) -> None:
        entry = self._entries.pop(key)
        self._followers.pop(key, None)
        self.nbytes -= entry.nbytes
        self._length_counts[len(key)] -= 1
        if self._length_counts[len(key)] == 0:
            del self._length_counts[len(key)]
            self._lengths.remove(len(key))
