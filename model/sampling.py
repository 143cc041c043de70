"""The batched sampler: every row of a decode step sampled at once, with its own settings.

All of it is tensor work on the logits' device; nothing loops over rows or sorts the
vocabulary. Per row, in this order:

1. `logit_bias` is added to the raw logits (OpenAI's field);
2. the CTRL repetition penalty (Keskar et al. 2019) shrinks the logits of tokens seen
   so far (the prompt included); OpenAI's presence and frequency penalties subtract
   `presence * [count > 0] + frequency * count` for the tokens generated so far;
3. banned tokens (e.g. the end of text before `min_tokens`) get -inf;
4. temperature 0 is greedy (argmax); otherwise softmax(logits / temperature), then the
   top-k, nucleus (top-p, Holtzman et al. 2020) and min-p filters keep a set of tokens;
5. a token is drawn by the inverse CDF (in vocabulary order) of the whole distribution
   and kept if the filters keep it, else drawn again (rejection, which gives exactly the
   filtered distribution); after a few rejections, or when top-k and top-p are combined,
   the draw is from the exact filtered mass (`_kept`).

Each draw's uniform number is a counter-based stream: a hash (SplitMix64) of (seed,
step, attempt), where step counts the row's own sampled tokens. A seeded row therefore draws the same numbers whatever
else shares the batch, on any device. The nucleus is found without a sort by a radix
select over the probabilities' float bits, summing integer (fixed-point) masses, so
the cut is exact and its sums do not depend on summation order (atomics on a GPU).
Across devices, same seed gives the same text as long as the model's probabilities
agree to within the gaps between cumulative masses: a CPU and a GPU usually agree,
but a token may differ where two outcomes are within float rounding of each other.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

import torch
from torch import Tensor

MASK64 = 0xFFFFFFFFFFFFFFFF
REJECTION_ATTEMPTS = 3  # draws from the whole distribution before the exact filtered one
FIXED_POINT = 2.0**40  # probabilities as integers for the nucleus search: exact, order-free sums


@dataclass(frozen=True)
class SamplingParams:
    """One row's settings; temperature 0 is greedy, and each filter or penalty at its default is off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    allow_unk: bool = False  # whether <unk> may be sampled or chosen (by default it is never generated)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError("temperature must be a finite number >= 0")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError("top_p must be in (0, 1]")
        if not (math.isfinite(self.min_p) and 0 <= self.min_p <= 1):
            raise ValueError("min_p must be in [0, 1]")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ValueError("repetition_penalty must be a finite number > 0")
        for name in ("presence_penalty", "frequency_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number")
        if not all(math.isfinite(bias) for _, bias in self.logit_bias):
            raise ValueError("logit_bias values must be finite numbers")

    @property
    def uses_history(self) -> bool:
        """Whether the row needs its seen tokens and generated counts."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass(frozen=True)
class SamplerInputs:
    """What the sampler needs besides the logits, one row each.

    `seen` (B, V) bool marks the tokens of the history (prompt and generated, for the
    repetition penalty); `counts` (B, V) counts the generated tokens (presence and
    frequency penalties); each may be None when no row needs it. `banned` lists the
    (row, token) pairs that must not be drawn (a few per row, so no (B, V) mask).
    """

    params: list[SamplingParams]
    seeds: list[int]
    steps: list[int]
    seen: Tensor | None = None
    counts: Tensor | None = None
    banned: list[tuple[int, int]] = field(default_factory=list)


def _column(values: list[float], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).unsqueeze(1)  # (B, 1)


def process_logits(logits: Tensor, inputs: SamplerInputs) -> Tensor:
    """The logits after bias, penalties and bans (B, V), float32; the input is left as it was."""
    params = inputs.params
    original = logits
    logits = logits.float()
    bias = [(row, token, value) for row, p in enumerate(params) for token, value in p.logit_bias]
    if bias:
        logits = logits.clone()  # index_put_ works in place
        rows, tokens, values = zip(*bias, strict=True)
        index = (torch.tensor(rows, device=logits.device), torch.tensor(tokens, device=logits.device))
        logits.index_put_(index, torch.tensor(values, device=logits.device), accumulate=True)
    if inputs.seen is not None and any(p.repetition_penalty != 1.0 for p in params):
        penalty = _column([p.repetition_penalty for p in params], logits)
        shrunk = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(inputs.seen, shrunk, logits)
    if inputs.counts is not None and any(p.presence_penalty or p.frequency_penalty for p in params):
        presence = _column([p.presence_penalty for p in params], logits)
        frequency = _column([p.frequency_penalty for p in params], logits)
        logits = logits - inputs.counts * frequency - (inputs.counts > 0).float() * presence
    if inputs.banned:
        logits = logits.clone() if logits is original else logits  # index_put_ works in place
        rows, tokens = zip(*inputs.banned, strict=True)
        index = (torch.tensor(rows, device=logits.device), torch.tensor(tokens, device=logits.device))
        logits.index_put_(index, torch.tensor(-math.inf, device=logits.device))
    return logits


def sampling_probs(logits: Tensor, inputs: SamplerInputs) -> Tensor:
    """The distribution each row is sampled from (B, V), float32, after every setting (one-hot when greedy)."""
    params = inputs.params
    logits = process_logits(logits, inputs)
    greedy = torch.tensor([p.temperature == 0 for p in params], device=logits.device)
    temperature = _column([p.temperature or 1.0 for p in params], logits)
    probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
    probs = probs * _kept(probs, params)
    if bool(greedy.any()):
        one_hot = torch.zeros_like(probs).scatter_(1, logits.argmax(dim=-1, keepdim=True), 1.0)
        probs = torch.where(greedy.unsqueeze(1), one_hot, probs)
    return probs / probs.sum(dim=-1, keepdim=True)


def _kept(probs: Tensor, params: list[SamplingParams]) -> Tensor:
    """(B, V) bool: the tokens top-k, then top-p (over the renormalised top-k mass), then min-p keep."""
    keep = torch.ones_like(probs, dtype=torch.bool)
    top_k = [p.top_k if 0 < p.top_k < probs.shape[1] else 0 for p in params]
    if any(top_k):
        values = torch.topk(probs, max(top_k), dim=-1).values  # (B, K), most likely first
        kth = values.gather(1, (torch.tensor(top_k, device=probs.device) - 1).clamp(min=0).unsqueeze(1))
        kth = torch.where(torch.tensor(top_k, device=probs.device).unsqueeze(1) > 0, kth, 0.0)
        keep &= probs >= kth  # ties with the k-th token are kept
    nucleus_rows = [row for row, p in enumerate(params) if p.top_p < 1.0]
    if nucleus_rows:
        rows = torch.tensor(nucleus_rows, device=probs.device)
        top_p = torch.tensor([params[row].top_p for row in nucleus_rows], dtype=torch.float64, device=probs.device)
        keep[rows] &= nucleus(probs[rows] * keep[rows], top_p)
    if any(p.min_p > 0 for p in params):
        min_p = _column([p.min_p for p in params], probs)
        keep &= probs >= min_p * probs.max(dim=-1, keepdim=True).values
    return keep


def nucleus(probs: Tensor, top_p: Tensor) -> Tensor:
    """(R, V) bool: the smallest set of most likely tokens whose mass reaches `top_p` of each row's total.

    A radix select, 8 bits a pass, over the float bits of the probabilities (for
    non-negative floats, the bits order as the values do) finds the probability of
    the last token in: every token at least that likely is kept (ties all go in).
    """
    weights = (probs.double() * FIXED_POINT).floor().long()  # (R, V) fixed-point masses
    target = (top_p * weights.sum(dim=1).double()).ceil().long()  # (R,)
    bits = probs.float().contiguous().view(torch.int32).long()  # (R, V), < 2**31 for p >= 0
    above = torch.zeros_like(target)  # mass of the tokens known to be above the threshold
    prefix = torch.zeros_like(target)  # the threshold's bits found so far
    for shift in (24, 16, 8, 0):
        digit = (bits >> shift) & 255
        in_range = weights if shift == 24 else weights * ((bits >> (shift + 8)) == prefix.unsqueeze(1))
        histogram = torch.zeros(bits.shape[0], 256, dtype=torch.long, device=bits.device)
        histogram.scatter_add_(1, digit, in_range)
        at_or_above = histogram.flip(1).cumsum(1).flip(1)  # (R, 256): mass of this digit and higher ones
        chosen = ((above.unsqueeze(1) + at_or_above) >= target.unsqueeze(1)).sum(
            1
        ) - 1  # the highest digit that reaches
        chosen = chosen.clamp(min=0)
        above += at_or_above.gather(1, chosen.unsqueeze(1)).squeeze(1) - histogram.gather(
            1, chosen.unsqueeze(1)
        ).squeeze(1)
        prefix = prefix * 256 + chosen
    return bits >= prefix.unsqueeze(1)


def _splitmix64(x: int) -> int:
    """SplitMix64's finaliser (Steele et al. 2014): a well-mixed 64-bit hash of a 64-bit counter."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def uniforms(seeds: list[int], steps: list[int], attempt: int = 0, device: torch.device | None = None) -> Tensor:
    """One uniform number in [0, 1) per row from (seed, step, attempt): a counter-based stream, float64.

    Computed on the host (a few integer operations a row, no kernel launches) and sent as one tensor.
    """
    values = [
        (_splitmix64(_splitmix64(seed) ^ (step * (REJECTION_ATTEMPTS + 1) + attempt)) >> 11) * 2.0**-53
        for seed, step in zip(seeds, steps, strict=True)
    ]
    return torch.tensor(values, dtype=torch.float64, device=device)


CDF_BLOCK = 128  # tokens per block of the two-level inverse CDF, about


def _block_size(vocab: int) -> int:
    """A block size near CDF_BLOCK that divides the vocabulary (no padded copy), else CDF_BLOCK."""
    for distance in range(CDF_BLOCK // 2):
        for size in (CDF_BLOCK - distance, CDF_BLOCK + distance):
            if vocab % size == 0:
                return size
    return CDF_BLOCK


def inverse_cdf(probs: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """(R,) the token where each row's cumulative mass (in vocabulary order) passes u times its total; the totals.

    Two levels instead of one running sum over the vocabulary: the block of CDF_BLOCK
    tokens where the mass passes the target (block sums are one vectorised reduction),
    then the token inside that block.
    """
    rows, vocab = probs.shape
    size = _block_size(vocab)
    blocks = -(-vocab // size)
    padded = probs if blocks * size == vocab else torch.nn.functional.pad(probs, (0, blocks * size - vocab))
    padded = padded.reshape(rows, blocks, size)
    block_mass = padded.sum(dim=2).double()  # (R, blocks)
    before_block = block_mass.cumsum(dim=1)  # mass up to the end of each block
    total = before_block[:, -1]
    target = u * total  # (R,)
    block = torch.searchsorted(before_block, target.unsqueeze(1), right=True).squeeze(1).clamp(max=blocks - 1)  # (R,)
    start = torch.where(block > 0, before_block.gather(1, (block - 1).clamp(min=0).unsqueeze(1)).squeeze(1), 0.0)
    inside = padded[torch.arange(rows, device=probs.device), block].double().cumsum(dim=1)  # (R, size)
    offset = torch.searchsorted(inside, (target - start).unsqueeze(1), right=True).squeeze(1).clamp(max=size - 1)
    index = (block * size + offset).clamp(max=vocab - 1)
    landed = probs.gather(1, index.unsqueeze(1)).squeeze(1)
    if bool((landed == 0).any()):  # rounding carried the target past a row's last token with mass
        last = vocab - 1 - (probs > 0).flip(1).int().argmax(dim=1)
        index = torch.where(landed == 0, last, index)
    return index, total


def _in_filters(probs: Tensor, index: Tensor, total: Tensor, params: list[SamplingParams]) -> Tensor:
    """(R,) bool: whether each row's token `index` is one its top-k, top-p and min-p filters keep.

    Only for rows that use at most one of top-k and top-p (the nucleus is then over the whole mass).
    """
    chosen = probs.gather(1, index.unsqueeze(1))  # (R, 1)
    accept = torch.ones(index.shape, dtype=torch.bool, device=probs.device)
    if any(p.top_p < 1.0 for p in params):
        # In the nucleus iff the mass of the strictly more likely tokens is still short of top_p.
        # Σ p over p > c, as Σ (p - c)+ + c · #(p > c): two cheap passes, no mask multiplied in.
        above = probs > chosen
        more_likely = ((probs - chosen).clamp_(min=0).sum(dim=1) + chosen.squeeze(1) * above.sum(dim=1)).double()
        top_p = torch.tensor([p.top_p for p in params], dtype=torch.float64, device=probs.device)
        accept &= more_likely < top_p * total
    if any(p.top_k for p in params):
        top_k = torch.tensor([p.top_k or probs.shape[1] for p in params], device=probs.device)
        accept &= (probs > chosen).sum(dim=1) < top_k
    if any(p.min_p for p in params):
        min_p = _column([p.min_p for p in params], probs)
        accept &= (chosen >= min_p * probs.max(dim=1, keepdim=True).values).squeeze(1)
    return accept


def sample(logits: Tensor, inputs: SamplerInputs) -> Tensor:
    """One token id per row (B,), on the logits' device.

    Filtered rows are sampled by rejection: a token drawn from the whole distribution is
    kept when the filters keep it, which gives exactly the filtered distribution with one
    cheap test instead of a sort. Rows still rejected after REJECTION_ATTEMPTS draws (a
    filter that keeps little mass), and rows that combine top-k with top-p, are drawn
    from the exact filtered distribution (`_kept`). A row's draws depend only on its own
    probabilities and (seed, step), never on the rest of the batch.
    """
    params = inputs.params
    logits = process_logits(logits, inputs)
    if any(p.temperature not in (0.0, 1.0) for p in params):
        logits = logits / _column([p.temperature or 1.0 for p in params], logits)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    chosen = torch.zeros(len(params), dtype=torch.long, device=logits.device)
    greedy = [row for row, p in enumerate(params) if p.temperature == 0]
    if greedy:
        rows = torch.tensor(greedy, device=logits.device)
        chosen[rows] = logits[rows].argmax(dim=-1)
    exact = [row for row, p in enumerate(params) if p.temperature and p.top_k and p.top_p < 1.0]
    waiting = [row for row, p in enumerate(params) if p.temperature and row not in exact]
    for attempt in range(REJECTION_ATTEMPTS):
        if not waiting:
            break
        every = len(waiting) == len(params)  # the usual first draw: no rows to pick out
        rows = torch.tensor(waiting, device=logits.device)
        row_probs = probs if every else probs[rows]
        seeds, steps = [inputs.seeds[row] for row in waiting], [inputs.steps[row] for row in waiting]
        index, total = inverse_cdf(row_probs, uniforms(seeds, steps, attempt, logits.device))
        accept = _in_filters(row_probs, index, total, [params[row] for row in waiting])
        chosen[rows] = torch.where(accept, index, chosen[rows])
        waiting = [row for row, ok in zip(waiting, accept.tolist(), strict=True) if not ok]
    exact += waiting
    if exact:
        rows = torch.tensor(exact, device=logits.device)
        row_probs = probs[rows]
        row_probs = row_probs * _kept(row_probs, [params[row] for row in exact])
        seeds, steps = [inputs.seeds[row] for row in exact], [inputs.steps[row] for row in exact]
        chosen[rows] = inverse_cdf(row_probs, uniforms(seeds, steps, REJECTION_ATTEMPTS, logits.device))[0]
    return chosen


def random_seed() -> int:
    """A seed for a row whose request named none."""
    return secrets.randbits(63)
