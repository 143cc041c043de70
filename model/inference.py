"""Inference primitives shared by the CLI and the server.

A running sequence is a *state* plus a *pending* token: the state has consumed every
token but the last, and the pending token is the last one, not yet fed. Feeding the
pending token gives the next-token distribution; feeding a text x scores x given
everything before it and leaves x's last token pending. A fresh sequence is the zero
state with the tokenizer's boundary token pending (start of a line, as in training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from model.network import RNNLM, State, select_state, state_from_tensors, state_tensors
from model.sampling import SamplerInputs, SamplingParams, random_seed, sample

# Time steps per forward when scoring long texts: bounds the (B, T, V) logits in memory.
SCORE_CHUNK = 128


def model_device(model: RNNLM) -> torch.device:
    return model.decoder.weight.device


@torch.inference_mode()
def advance(model: RNNLM, pending: Tensor, state: State) -> tuple[Tensor, State]:
    """Feed one token per row: pending (B,) -> next-token logits (B, V) and the new state."""
    output, state = model.encode(pending.unsqueeze(1), state)  # (B, 1, H)
    return model.decode(output[:, 0]), state  # (B, V)


@dataclass(frozen=True)
class TopLogprobs:
    """The `k` most likely tokens at each fed position of one row: values and ids (len, k), on the CPU."""

    values: Tensor
    ids: Tensor


@torch.inference_mode()
def feed_tokens(
    model: RNNLM,
    state: State,
    pending: list[int],
    texts: list[list[int]],
    with_logprobs: bool = True,
) -> tuple[list[Tensor], State, list[int]]:
    """Score each row's tokens given its state and pending token, and advance.

    Returns per-row log-probabilities (len_i,) of the given tokens (empty tensors when
    `with_logprobs` is false), the new batched state, and the new pending tokens.
    Rows are processed together, right-padded, in chunks of SCORE_CHUNK steps.
    """
    fed = feed_tokens_with_top(model, state, pending, texts, with_logprobs, top=0)
    return fed.logprobs, fed.state, fed.pending


@dataclass(frozen=True)
class Fed:
    """What `feed_tokens_with_top` gives back, one entry per row."""

    logprobs: list[Tensor]  # (len_i,) log-probabilities of the fed tokens (empty without with_logprobs)
    tops: list[TopLogprobs] | None  # the `top` most likely tokens at each position, when asked
    state: State  # the batched state after every row's tokens
    pending: list[int]  # each row's last token
    snapshots: list[list[State]]  # single-row states after each of the row's `cuts`, in order


@torch.inference_mode()
def feed_tokens_with_top(
    model: RNNLM,
    state: State,
    pending: list[int],
    texts: list[list[int]],
    with_logprobs: bool,
    top: int,
    cuts: list[list[int]] | None = None,
) -> Fed:
    """`feed_tokens`, also giving the `top` most likely tokens at every position (from the same log-softmax).

    `cuts[i]` lists lengths 0 < n < len(texts[i]) after which a copy of row i's state is
    wanted (the serving engine caches prompt prefixes there); the forward is split at them.
    """
    device = model_device(model)
    batch_size = len(texts)
    lengths = torch.tensor([len(t) for t in texts], dtype=torch.long)
    max_len = int(lengths.max()) if batch_size else 0
    top = min(top, model.config.vocab_size) if with_logprobs else 0
    # inputs_i = [pending_i] + texts_i[:-1]; targets_i = texts_i
    inputs = torch.zeros(batch_size, max_len, dtype=torch.long)
    targets = torch.zeros(batch_size, max_len, dtype=torch.long)
    for row, tokens in enumerate(texts):
        if tokens:
            inputs[row, : len(tokens)] = torch.tensor([pending[row], *tokens[:-1]])
            targets[row, : len(tokens)] = torch.tensor(tokens)
    inputs, targets = inputs.to(device), targets.to(device)
    logprobs = torch.zeros(batch_size, max_len, device=device)
    top_values = torch.zeros(batch_size, max_len, top, device=device)
    top_ids = torch.zeros(batch_size, max_len, top, dtype=torch.long, device=device)
    cuts = cuts or [[] for _ in texts]
    snapshots: list[list[State]] = [[] for _ in texts]
    for start in range(0, max_len, SCORE_CHUNK):
        stop = min(start + SCORE_CHUNK, max_len)
        window = torch.nonzero(lengths > start).flatten().to(device)  # rows with tokens in this window
        # The recurrence runs in pieces split at the cuts (to copy states out there); the
        # decoder and the log-softmax run once over the window's outputs.
        outputs = model.decoder.weight.new_zeros(batch_size, stop - start, model.config.hidden_size)
        piece_start = start
        for piece_stop in sorted({n for row in cuts for n in row if start < n < stop} | {stop}):
            active = torch.nonzero(lengths > piece_start).flatten()
            piece_lengths = (lengths[active] - piece_start).clamp(max=piece_stop - piece_start)
            end = piece_start + int(piece_lengths.max())
            rows = active.to(device)
            sub_state = select_state(state, rows)
            output, sub_state = model.encode(inputs[rows, piece_start:end], sub_state, piece_lengths)  # (b, t, H)
            state = _scatter_state(state, rows, sub_state)
            outputs[rows, piece_start - start : end - start] = output
            for row, row_cuts in enumerate(cuts):
                if end in row_cuts:
                    snapshots[row].append(
                        state_from_tensors([t[:, row : row + 1].clone() for t in state_tensors(state)])
                    )
            piece_start = end
        if with_logprobs:
            chunk = F.log_softmax(model.decode(outputs[window]).float(), dim=-1)  # (b, t, V)
            picked = chunk.gather(-1, targets[window, start:stop].unsqueeze(-1)).squeeze(-1)  # (b, t)
            logprobs[window, start:stop] = picked
            if top:
                values, ids = torch.topk(chunk, top, dim=-1)  # (b, t, k)
                top_values[window, start:stop], top_ids[window, start:stop] = values, ids
    new_pending = [tokens[-1] if tokens else pending[row] for row, tokens in enumerate(texts)]
    per_row = [
        logprobs[row, : len(tokens)].cpu() if with_logprobs else torch.zeros(0) for row, tokens in enumerate(texts)
    ]
    tops = None
    if top:
        tops = [
            TopLogprobs(top_values[row, : len(tokens)].cpu(), top_ids[row, : len(tokens)].cpu())
            for row, tokens in enumerate(texts)
        ]
    return Fed(per_row, tops, state, new_pending, snapshots)


def _scatter_state(state: State, rows: Tensor, sub_state: State) -> State:
    if isinstance(state, tuple) and isinstance(sub_state, tuple):
        h, c = state[0].clone(), state[1].clone()
        h[:, rows], c[:, rows] = sub_state
        return (h, c)
    assert isinstance(state, Tensor) and isinstance(sub_state, Tensor)
    state = state.clone()
    state[:, rows] = sub_state
    return state


def fresh_sequences(model: RNNLM, boundary_id: int, count: int) -> tuple[State, list[int]]:
    """Zero states with the boundary token pending."""
    with torch.inference_mode():
        return model.init_state(count), [boundary_id] * count


def prime(model: RNNLM, boundary_id: int, prompts: list[list[int]]) -> tuple[State, list[int]]:
    """Encode prompts from the start of a line: the state and pending token after each."""
    state, pending = fresh_sequences(model, boundary_id, len(prompts))
    _, state, pending = feed_tokens(model, state, pending, prompts, with_logprobs=False)
    return state, pending


def generate_ids(
    model: RNNLM,
    boundary_id: int,
    prompt: list[int],
    max_tokens: int,
    params: SamplingParams,
    seed: int | None = None,
    stop_ids: set[int] | None = None,
) -> list[int]:
    """Sample up to `max_tokens` ids after `prompt` for one sequence (the CLI's loop), as the server would."""
    state, pending = prime(model, boundary_id, [prompt])
    seed = seed if seed is not None else random_seed()
    device = model_device(model)
    seen = torch.zeros(1, model.config.vocab_size, dtype=torch.bool, device=device)
    seen[0, prompt] = True
    counts = torch.zeros(1, model.config.vocab_size, device=device)
    out: list[int] = []
    token = torch.tensor(pending, device=device)
    for step in range(max_tokens):
        logits, state = advance(model, token, state)
        inputs = SamplerInputs([params], [seed], [step], seen, counts)
        token = sample(logits, inputs)
        out.append(int(token[0]))
        seen[0, token] = True
        counts[0, token] += 1
        if stop_ids and out[-1] in stop_ids:
            break
    return out
