"""What goes into the engine and what comes out: plain values, shared by every row kind."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from torch import Tensor

from model.network import State
from model.sampling import SamplingParams

if TYPE_CHECKING:  # only named in annotations: importing it would load llguidance
    from app.engine.constraint import Constraint

FinishReason = Literal["length", "stop", "eos"]

Top = list[tuple[int, float]]  # (token id, log-probability), most likely first


@dataclass(frozen=True)
class SequenceState:
    """One sequence: a single-row state (each tensor (layers, 1, hidden)) and its pending token.

    `history` is every token fed since a fresh start, when known (not for a state read
    back from a session): it keys the prefix-state cache.
    """

    state: State
    pending: int
    history: tuple[int, ...] | None = None

    def after(self, state: State, ids: list[int]) -> SequenceState:
        """The sequence once `ids` (non-empty) are fed: `state`, the last id pending."""
        return SequenceState(state, ids[-1], None if self.history is None else (*self.history, *ids))


@dataclass(frozen=True)
class FeedResult:
    logprobs: list[float]  # log p(ids[i] | start, ids[:i]), natural log
    end: SequenceState
    top: list[Top] = field(default_factory=list)  # at each fed position, when asked for
    cached: int = 0  # of the ids, how many the prefix-state cache spared feeding


@dataclass(frozen=True)
class NextTokenResult:
    logprobs: Tensor  # (V,) raw model log-probabilities of the next token, float32 on CPU
    end: SequenceState  # the start after the fed ids; the next token itself is not consumed
    fed_logprobs: list[float]


@dataclass(frozen=True)
class GenerationSettings:
    """How one sequence is sampled; `history` primes the repetition penalty (usually the prompt).

    Choice i of a request for n draws from seed + i, so it equals a request of its own
    with that seed. `min_tokens` bans `eos_id` until that many tokens are out. A
    `constraint` restricts the text to a language (app/engine/constraint.py); it ends the
    text itself, so `min_tokens` does not apply to it.

    `stop_ids` end the text like `eos_id` (their text hidden unless `include_stop`, which
    also keeps a stop string at the end), and `min_tokens` holds them back too;
    `allowed_ids` are the only tokens drawn; each of `bad_words` (a token sequence) is never
    completed: its last token is banned where the text ends with the others.
    """

    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    eos_id: int | None = None  # finish with "eos" when this token is sampled
    top_logprobs: int = 0
    history: tuple[int, ...] = ()
    min_tokens: int = 0
    # A session's: bytes of a character an earlier generation began (byte-level subwords), and
    # the promise to hold an unfinished character at the end (GenerationResult.held_bytes)
    # rather than show it as U+FFFD. None: a one-shot text, whole at its end.
    carried_bytes: bytes | None = None
    constraint: Constraint | None = None
    stop_ids: tuple[int, ...] = ()
    include_stop: bool = False
    allowed_ids: tuple[int, ...] | None = None
    bad_words: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of choice `choice`: `text` is what it releases (held back while it could start a stop string)."""

    token_id: int
    piece: str
    text: str
    logprob: float
    top: Top
    choice: int = 0
    finish: FinishReason | None = None  # set on a choice's last token when that token ends it
    stop_reason: int | str | None = None  # with finish "stop": the stop token id or stop string


@dataclass(frozen=True)
class GenerationResult:
    finish_reason: FinishReason
    end: SequenceState  # state after every generated token, the last one pending
    token_ids: list[int]
    fed_logprobs: list[float]  # logprobs of the ids fed before generating (the prompt)
    choice: int = 0
    fed_top: list[Top] = field(default_factory=list)  # the most likely tokens at each fed position, if asked
    held_bytes: bytes = b""  # with carried_bytes: the unfinished character's bytes at the end
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it ("stop")
    cached: int = 0  # of the prompt's ids, how many the prefix-state cache spared feeding


def finite(value: float) -> float:
    """JSON has no -inf: a token of probability 0 gets the most negative float instead."""
    return value if math.isfinite(value) else -1e30


@dataclass(frozen=True)
class Hooks:
    """Where the worker reports (the app wires /metrics here)."""

    on_step: Callable[[int], None] = lambda rows: None  # decode batch size of each tick
    on_active: Callable[[int], None] = lambda rows: None  # decode rows admitted
    on_tokens: Callable[[int], None] = lambda count: None  # tokens generated
    on_prefix_lookup: Callable[[int], None] = lambda saved: None  # prompt tokens a cache lookup saved (0: miss)
    on_prefix_bytes: Callable[[int], None] = lambda held: None  # bytes the prefix cache holds
    on_queue: Callable[[int, int], None] = lambda waiting, running: None  # jobs in the feed queue, jobs decoding
    on_queue_time: Callable[[float], None] = lambda seconds: None  # admission to the end of the job's feed
    on_first_token: Callable[[float], None] = lambda seconds: None  # admission to a choice's first token
    on_inter_token: Callable[[float], None] = lambda seconds: None  # between two tokens of one choice
