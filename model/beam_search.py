"""Beam search as a stepper: the caller runs the model, the search picks the next rows.

The serving engine advances a search's rows in the same batched forward as every other
row; `beam_search` below runs one search alone (offline, and as the reference in tests).

Hypotheses are ranked by GNMT's length-normalised score (Wu et al. 2016):
logprob / lp(len), lp(len) = ((5 + len) / 6) ** length_penalty, so 0 ranks by the
raw log-probability and larger values favour longer texts. The greedy path rides
along as one more row, so the answer is never less likely than greedy decoding's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from model.inference import advance
from model.network import RNNLM, State, cat_states, select_state

BeamFinish = Literal["length", "eos"]


@dataclass(frozen=True)
class BeamSettings:
    """One search: `eos_id` finishes a hypothesis (the token is part of it); `banned` tokens are never chosen.

    With `keep_prefixes` every beam of every length is an answer (cut with finish
    "length"), which is how /v1/fill proposes spans of each length.
    """

    beam_width: int
    max_tokens: int
    length_penalty: float = 0.0
    eos_id: int | None = None
    banned: tuple[int, ...] = ()
    keep_prefixes: bool = False
    with_greedy: bool = True
    allow_unk: bool = False  # the serving engine bans the unknown token unless this is set
    answers: int = 1  # the search stops early only once this many finished hypotheses beat every live row


@dataclass(frozen=True)
class Hypothesis:
    """A finished (or cut) continuation: its token ids and their raw model log-probabilities."""

    ids: list[int]
    logprobs: list[float]
    finish: BeamFinish

    @property
    def logprob(self) -> float:
        return math.fsum(self.logprobs)

    def score(self, length_penalty: float) -> float:
        return normalised_score(self.logprob, len(self.ids), length_penalty)


def normalised_score(logprob: float, length: int, length_penalty: float) -> float:
    """GNMT's length normalisation: logprob / ((5 + length) / 6) ** length_penalty."""
    return float(logprob / ((5 + length) / 6) ** length_penalty)


class BeamSearch:
    """The bookkeeping of one search. Its rows are the live beams, then (while it runs) the greedy path.

    Each step the caller hands `step` the next-token log-probabilities of those rows
    (the model fed each row's last token) and gets back, for every row of the next
    step, (parent row, token): the parent's state advanced by that token. Only the
    top candidates and the greedy choice leave the logits' device.
    """

    def __init__(self, settings: BeamSettings) -> None:
        self.settings = settings
        self.beams: list[list[int]] = [[]]
        self.beam_logprobs: list[list[float]] = [[]]
        self.finished: list[Hypothesis] = []
        self.prefixes: list[Hypothesis] = []
        self.greedy: list[int] | None = [] if settings.with_greedy else None
        self.greedy_logprobs: list[float] = []
        self.steps = 0
        self.done = settings.max_tokens <= 0

    @property
    def rows(self) -> int:
        return len(self.beams) + (self.greedy is not None)

    def step(self, logprobs: Tensor) -> list[tuple[int, int]]:
        """Next-token log-probabilities of the rows (rows, V), float64 -> the next rows; [] when done."""
        settings, live = self.settings, len(self.beams)
        if settings.banned:
            logprobs = logprobs.clone()
            logprobs[:, list(settings.banned)] = -math.inf
        last_step = self.steps == settings.max_tokens - 1
        self.steps += 1
        greedy_next: list[tuple[int, int]] = []
        if self.greedy is not None:
            value, index = logprobs[live].max(dim=0)
            token = int(index)
            self.greedy.append(token)
            self.greedy_logprobs.append(float(value))
            if token == settings.eos_id or last_step:
                finish: BeamFinish = "eos" if token == settings.eos_id else "length"
                self.finished.append(Hypothesis(list(self.greedy), list(self.greedy_logprobs), finish))
                self.greedy = None
            else:
                greedy_next = [(live, token)]
        scores = torch.tensor([math.fsum(lps) for lps in self.beam_logprobs], dtype=torch.float64)
        candidates = (scores.to(logprobs.device).unsqueeze(1) + logprobs[:live]).flatten()  # (live * V,)
        vocab = logprobs.shape[1]
        values, flat = torch.topk(candidates, min(2 * settings.beam_width, candidates.numel()))
        picked = logprobs[:live].flatten()[flat]  # each candidate's own token log-probability
        next_beams: list[list[int]] = []
        next_logprobs: list[list[float]] = []
        rows: list[tuple[int, int]] = []
        for rank, (value, index, token_logprob) in enumerate(
            zip(values.tolist(), flat.tolist(), picked.tolist(), strict=True)
        ):
            if value == -math.inf or len(next_beams) == settings.beam_width:
                break
            parent, token = divmod(index, vocab)
            ids = [*self.beams[parent], token]
            token_logprobs = [*self.beam_logprobs[parent], token_logprob]
            if token == settings.eos_id:
                if rank < settings.beam_width:  # an end only counts when it ranks among the beam
                    self.finished.append(Hypothesis(ids, token_logprobs, "eos"))
                continue
            next_beams.append(ids)
            next_logprobs.append(token_logprobs)
            rows.append((parent, token))
        self.beams, self.beam_logprobs = next_beams, next_logprobs
        if settings.keep_prefixes:
            self.prefixes.extend(
                Hypothesis(ids, lps, "length") for ids, lps in zip(next_beams, next_logprobs, strict=True)
            )
        elif self._cannot_improve(greedy_next):
            self.beams, self.beam_logprobs, rows = [], [], []  # the unfinished rows cannot win: no answers
        if last_step or not self.beams:
            self.done = True
            return []
        return rows + greedy_next

    def _cannot_improve(self, greedy_next: list[tuple[int, int]]) -> bool:
        """No live row can beat the `answers` best finished hypotheses any more (log-probabilities only fall)."""
        length_penalty = self.settings.length_penalty
        scores = sorted({tuple(h.ids): h.score(length_penalty) for h in self.finished}.values(), reverse=True)
        if len(scores) < self.settings.answers:
            return False
        best = scores[self.settings.answers - 1]
        live = [math.fsum(lps) for lps in self.beam_logprobs]
        if greedy_next:
            live.append(math.fsum(self.greedy_logprobs))
        if not live:
            return True
        # A live row's raw score can only drop; its normalised score is at best that over the longest lp.
        return normalised_score(max(live), self.settings.max_tokens, length_penalty) <= best

    def hypotheses(self) -> list[Hypothesis]:
        """Every answer, best first (the live beams count as cut at their length)."""
        results = list(self.prefixes) + list(self.finished)
        if not self.settings.keep_prefixes:
            results += [Hypothesis(ids, lps, "length") for ids, lps in zip(self.beams, self.beam_logprobs, strict=True)]
        unique = {tuple(h.ids): h for h in results}
        return sorted(unique.values(), key=lambda h: h.score(self.settings.length_penalty), reverse=True)


@torch.inference_mode()
def beam_search(model: RNNLM, state: State, pending: int, settings: BeamSettings) -> list[Hypothesis]:
    """Hypotheses after a single-row `state` + `pending` token, best first: one search alone."""
    search = BeamSearch(settings)
    device = model.decoder.weight.device
    batch_state = cat_states([state] * search.rows)
    batch_pending = [pending] * search.rows
    while not search.done:
        logits, stepped = advance(model, torch.tensor(batch_pending, device=device), batch_state)  # (rows, V)
        rows = search.step(F.log_softmax(logits.double(), dim=-1))
        if not rows:
            break
        batch_state = select_state(stepped, torch.tensor([parent for parent, _ in rows], device=device))
        batch_pending = [token for _, token in rows]
    return search.hypotheses()
