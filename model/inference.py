"""Inference primitives shared by the CLI and the server.

A running sequence is a *state* plus a *pending* token: the state has consumed every
token but the last, and the pending token is the last one, not yet fed. Feeding the
pending token gives the next-token distribution; feeding a text x scores x given
everything before it and leaves x's last token pending. A fresh sequence is the zero
state with the tokenizer's boundary token pending (start of a line, as in training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from model.network import RNNLM, State, select_state

# Time steps per forward when scoring long texts: bounds the (B, T, V) logits in memory.
SCORE_CHUNK = 128


@dataclass(frozen=True)
class SamplingParams:
    """Per-sequence sampling settings; temperature 0 is greedy, top_k 0 and top_p 1 are off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError("temperature must be a finite number >= 0")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError("top_p must be in (0, 1]")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ValueError("repetition_penalty must be a finite number > 0")


def model_device(model: RNNLM) -> torch.device:
    return model.decoder.weight.device


@torch.inference_mode()
def advance(model: RNNLM, pending: Tensor, state: State) -> tuple[Tensor, State]:
    """Feed one token per row: pending (B,) -> next-token logits (B, V) and the new state."""
    output, state = model.encode(pending.unsqueeze(1), state)  # (B, 1, H)
    return model.decode(output[:, 0]), state  # (B, V)


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
    device = model_device(model)
    batch_size = len(texts)
    lengths = torch.tensor([len(t) for t in texts], dtype=torch.long)
    max_len = int(lengths.max()) if batch_size else 0
    # inputs_i = [pending_i] + texts_i[:-1]; targets_i = texts_i
    inputs = torch.zeros(batch_size, max_len, dtype=torch.long)
    targets = torch.zeros(batch_size, max_len, dtype=torch.long)
    for row, tokens in enumerate(texts):
        if tokens:
            inputs[row, : len(tokens)] = torch.tensor([pending[row], *tokens[:-1]])
            targets[row, : len(tokens)] = torch.tensor(tokens)
    inputs, targets = inputs.to(device), targets.to(device)
    logprobs = torch.zeros(batch_size, max_len, device=device)
    for start in range(0, max_len, SCORE_CHUNK):
        active = torch.nonzero(lengths > start).flatten()  # rows with tokens left
        chunk_lengths = (lengths[active] - start).clamp(max=SCORE_CHUNK)
        stop = start + int(chunk_lengths.max())
        rows = active.to(device)
        sub_state = select_state(state, rows)
        output, sub_state = model.encode(inputs[rows, start:stop], sub_state, chunk_lengths)  # (b, t, H)
        state = _scatter_state(state, rows, sub_state)
        if with_logprobs:
            chunk = F.log_softmax(model.decode(output).float(), dim=-1)  # (b, t, V)
            picked = chunk.gather(-1, targets[rows, start:stop].unsqueeze(-1)).squeeze(-1)  # (b, t)
            logprobs[rows, start:stop] = picked
    new_pending = [tokens[-1] if tokens else pending[row] for row, tokens in enumerate(texts)]
    per_row = [
        logprobs[row, : len(tokens)].cpu() if with_logprobs else torch.zeros(0) for row, tokens in enumerate(texts)
    ]
    return per_row, state, new_pending


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


def apply_repetition_penalty(logits: Tensor, history: list[int], penalty: float) -> Tensor:
    """CTRL's penalty (Keskar et al. 2019): shrink the logits of tokens already seen."""
    if penalty == 1.0 or not history:
        return logits
    seen = torch.tensor(sorted(set(history)), dtype=torch.long)
    values = logits[seen]
    logits = logits.clone()
    logits[seen] = torch.where(values > 0, values / penalty, values * penalty)
    return logits


def sampling_distribution(logits: Tensor, params: SamplingParams, history: list[int]) -> Tensor:
    """The probabilities actually sampled from (V,), float64, after every setting."""
    logits = apply_repetition_penalty(logits.double(), history, params.repetition_penalty)
    if params.temperature == 0:
        probs = torch.zeros_like(logits)
        probs[int(torch.argmax(logits))] = 1.0
        return probs
    logits = logits / params.temperature
    if 0 < params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        # Nucleus sampling (Holtzman et al. 2020): the smallest set with mass >= top_p.
        sorted_probs, order = torch.sort(probs, descending=True)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs[mass_before >= params.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        probs = probs / probs.sum()
    return probs


def sample_next(
    logits: Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator],
    histories: list[list[int]],
) -> tuple[list[int], Tensor]:
    """Sample one token per row with that row's settings and generator.

    logits: (B, V). Each row draws exactly one uniform number from its own generator,
    so a seeded sequence gives the same tokens whatever else shares the batch.
    Returns the ids and the raw model log-probabilities (B, V) they were drawn under.
    """
    logits = logits.float().cpu()
    raw_logprobs = F.log_softmax(logits, dim=-1)  # (B, V)
    chosen = []
    for row in range(logits.shape[0]):
        probs = sampling_distribution(logits[row], params[row], histories[row])
        u = torch.rand((), generator=generators[row], dtype=torch.float64)
        cumulative = torch.cumsum(probs, dim=0)
        index = int(torch.searchsorted(cumulative, u * cumulative[-1], right=True))
        index = min(index, probs.numel() - 1)
        while probs[index] == 0:  # never land on a filtered-out token through rounding
            index -= 1
        chosen.append(index)
    return chosen, raw_logprobs


def make_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
    return generator


def generate_ids(
    model: RNNLM,
    boundary_id: int,
    prompt: list[int],
    max_tokens: int,
    params: SamplingParams,
    seed: int | None = None,
    stop_ids: set[int] | None = None,
) -> list[int]:
    """Sample up to `max_tokens` ids after `prompt` for one sequence (the CLI's loop)."""
    state, pending = prime(model, boundary_id, [prompt])
    generator = make_generator(seed)
    history = list(prompt)
    out: list[int] = []
    token = torch.tensor(pending, device=model_device(model))
    for _ in range(max_tokens):
        logits, state = advance(model, token, state)
        ids, _ = sample_next(logits, [params], [generator], [history])
        out.append(ids[0])
        history.append(ids[0])
        if stop_ids and ids[0] in stop_ids:
            break
        token = torch.tensor(ids, device=token.device)
    return out
