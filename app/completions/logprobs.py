"""A completion's log-probabilities as OpenAI and vLLM spell them.

OpenAI's `logprobs: k`: each token's log-probability, and in `top_logprobs` the token
itself plus the k most likely (up to k + 1 entries; `logprobs: 0` gives the token's own
entry), keyed as `tokens` spells them (a word's leading space included; with
`return_tokens_as_token_ids` as "token_id:<id>"). With `echo` the prompt's tokens come
first, the first of them with `null` for both, as OpenAI and vLLM give it: a text here
is conditioned on the start of a line, so that number exists, and /v1/score keeps it.
vLLM's `prompt_logprobs: k`: per prompt token (the first null), keyed by token id, the
token and the k most likely, each with its rank when known.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.completions.protocol import CompletionLogprobs, PromptLogprob
from app.engine import TokenEvent, Top
from model.tokenizer import Tokenizer


@dataclass(frozen=True)
class Spelling:
    """How a token is written in `tokens` and as a `top_logprobs` key."""

    tokenizer: Tokenizer
    as_ids: bool = False  # vLLM's return_tokens_as_token_ids

    def __call__(self, token_id: int, previous: int | None) -> str:
        return f"token_id:{token_id}" if self.as_ids else self.tokenizer.piece(token_id, previous)

    def entry(self, token_id: int, logprob: float, top: Top, previous: int | None) -> dict[str, float]:
        """The token's own entry with the most likely ones (top first, then the token if it is not among them)."""
        found = {self(alternative, previous): value for alternative, value in top}
        found.setdefault(self(token_id, previous), logprob)
        return found


@dataclass(frozen=True)
class ScoredPrompt:
    """A prompt's tokens as given (the boundary included when it was sent) and what feeding them computed.

    `values[i]` and `tops[i]` belong to `ids[i]`; the boundary a prompt starts at has none.
    """

    ids: list[int]
    values: list[float | None]
    tops: list[Top | None]
    offsets: list[int]


def echoed(spelling: Spelling, prompt: ScoredPrompt) -> CompletionLogprobs:
    """The prompt's part of OpenAI's logprobs: the first token null, then each token's entry."""
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    previous: int | None = None
    for position, token in enumerate(prompt.ids):
        value, top = prompt.values[position], prompt.tops[position]
        tokens.append(spelling(token, previous))
        if position == 0 or value is None:
            values.append(None)
            tops.append(None)
        else:
            values.append(value)
            tops.append(spelling.entry(token, value, top or [], previous))
        previous = token
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=prompt.offsets[: len(tokens)]
    )


def generated(spelling: Spelling, events: list[TokenEvent], previous: int, start: int) -> CompletionLogprobs:
    """Generated tokens; offsets follow their pieces (a stop string may cut the text before the last ones)."""
    offsets, tops, position = [], [], start
    for event in events:
        offsets.append(position)
        position += len(event.piece)
        tops.append(spelling.entry(event.token_id, event.logprob, event.top, previous))
        previous = event.token_id
    return CompletionLogprobs(
        tokens=[spelling(event.token_id, None) if spelling.as_ids else event.piece for event in events],
        token_logprobs=[event.logprob for event in events],
        top_logprobs=list(tops),
        text_offset=offsets,
    )


def joined(first: CompletionLogprobs, second: CompletionLogprobs) -> CompletionLogprobs:
    return CompletionLogprobs(
        tokens=first.tokens + second.tokens,
        token_logprobs=first.token_logprobs + second.token_logprobs,
        top_logprobs=first.top_logprobs + second.top_logprobs,
        text_offset=first.text_offset + second.text_offset,
    )


def prompt_logprobs(spelling: Spelling, prompt: ScoredPrompt) -> list[dict[str, PromptLogprob] | None]:
    """vLLM's prompt_logprobs: null for the first token, then the token and its alternatives by id."""
    found: list[dict[str, PromptLogprob] | None] = []
    previous: int | None = None
    for position, token in enumerate(prompt.ids):
        value, top = prompt.values[position], prompt.tops[position] or []
        if position == 0 or value is None:
            found.append(None)
        else:
            ranks = {alternative: rank for rank, (alternative, _) in enumerate(top, start=1)}
            entry = {
                str(token): PromptLogprob(logprob=value, rank=ranks.get(token), decoded_token=spelling(token, previous))
            }
            for alternative, alternative_value in top:
                entry.setdefault(
                    str(alternative),
                    PromptLogprob(
                        logprob=alternative_value,
                        rank=ranks[alternative],
                        decoded_token=spelling(alternative, previous),
                    ),
                )
            found.append(entry)
        previous = token
    return found
