"""Beam search: the most likely continuation instead of a sampled one.

All live beams of a request advance together, one batched forward per step
(`advance` over the rows of one state). The search runs in a worker thread
(`asyncio.to_thread`): the engine's scheduler samples one token per row and has no
notion of a beam, and the event loop must never run torch. The prompt itself is
still encoded by the engine, batched with everyone else's prompts.

Hypotheses are ranked by GNMT's length-normalised score (Wu et al. 2016):
logprob / lp(len), lp(len) = ((5 + len) / 6) ** length_penalty, so 0 ranks by the
raw log-probability and larger values favour longer texts. The greedy path rides
along as one more row, so the answer is never less likely than greedy decoding's.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from app.engine import SequenceState
from app.errors import InvalidRequest, LimitExceeded, ServerBusy
from app.protocol.generate import BeamSummary, GeneratedToken, GenerateRequest, GenerateResponse
from app.registry import ModelRegistry, ServedModel
from app.serving.generate import prepare_generation
from app.settings import Settings
from model.inference import advance
from model.network import RNNLM, State, cat_states, select_state

BeamFinish = Literal["length", "eos"]


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


@torch.inference_mode()
def beam_search(
    model: RNNLM,
    state: State,
    pending: int,
    beam_width: int,
    max_tokens: int,
    length_penalty: float = 0.0,
    eos_id: int | None = None,
    banned: Sequence[int] = (),
    keep_prefixes: bool = False,
    with_greedy: bool = True,
    stop: threading.Event | None = None,
) -> list[Hypothesis]:
    """Hypotheses after a single-row `state` + `pending` token, best first.

    `eos_id` finishes a hypothesis (the token is part of it); `banned` tokens are never
    chosen. With `keep_prefixes` every beam of every length is returned (cut with
    finish "length"), which is how /v1/fill proposes spans of each length. Setting
    `stop` (its caller has gone) ends the search before the next step.
    """
    device = model.decoder.weight.device
    banned_ids = torch.tensor(sorted(set(banned)), dtype=torch.long)
    beams: list[list[int]] = [[]]
    beam_logprobs: list[list[float]] = [[]]
    scores = torch.zeros(1, dtype=torch.float64)  # (B,) raw log-probability of each live beam
    finished: list[Hypothesis] = []
    prefixes: list[Hypothesis] = []
    greedy: list[int] | None = [] if with_greedy else None
    greedy_logprobs: list[float] = []
    # Rows of the batch: the live beams, then (while it runs) the greedy path.
    batch_state = cat_states([state, state]) if greedy is not None else state
    batch_pending = [pending, pending] if greedy is not None else [pending]
    for step in range(max_tokens):
        if stop is not None and stop.is_set():
            break
        logits, stepped = advance(model, torch.tensor(batch_pending, device=device), batch_state)  # (B, V)
        logprobs = F.log_softmax(logits.double(), dim=-1).cpu()  # (B, V)
        if banned_ids.numel():
            logprobs[:, banned_ids] = -math.inf
        live = len(beams)
        greedy_row: list[int] = []
        if greedy is not None:
            token = int(torch.argmax(logprobs[live]))
            greedy.append(token)
            greedy_logprobs.append(float(logprobs[live, token]))
            if token == eos_id or step == max_tokens - 1:
                finished.append(Hypothesis(list(greedy), list(greedy_logprobs), "eos" if token == eos_id else "length"))
                greedy = None
            else:
                greedy_row = [live]
        candidates = (scores.unsqueeze(1) + logprobs[:live]).flatten()  # (B * V,)
        vocab = logprobs.shape[1]
        values, flat = torch.topk(candidates, min(2 * beam_width, candidates.numel()))
        next_beams: list[list[int]] = []
        next_logprobs: list[list[float]] = []
        parents: list[int] = []
        tokens: list[int] = []
        for rank, (value, index) in enumerate(zip(values.tolist(), flat.tolist(), strict=True)):
            if value == -math.inf or len(next_beams) == beam_width:
                break
            parent, token = divmod(index, vocab)
            ids = [*beams[parent], token]
            token_logprobs = [*beam_logprobs[parent], float(logprobs[parent, token])]
            if token == eos_id:
                if rank < beam_width:  # an end only counts when it ranks among the beam
                    finished.append(Hypothesis(ids, token_logprobs, "eos"))
                continue
            next_beams.append(ids)
            next_logprobs.append(token_logprobs)
            parents.append(parent)
            tokens.append(token)
        beams, beam_logprobs = next_beams, next_logprobs
        scores = torch.tensor([math.fsum(lps) for lps in beam_logprobs], dtype=torch.float64)
        if keep_prefixes:
            prefixes.extend(Hypothesis(ids, lps, "length") for ids, lps in zip(beams, beam_logprobs, strict=True))
        # Live rows, the greedy path included: when none can still win, the search is over.
        greedy_score = [math.fsum(greedy_logprobs)] if greedy_row else []
        hopeful = torch.cat([scores, torch.tensor(greedy_score, dtype=torch.float64)])
        if not keep_prefixes and _cannot_improve(finished, hopeful, max_tokens, length_penalty):
            beams, beam_logprobs = [], []  # cut short: the unfinished rows cannot win, so they are no answers
        if not beams:
            break
        rows = torch.tensor(parents + greedy_row, dtype=torch.long, device=device)
        batch_state = select_state(stepped, rows)
        batch_pending = tokens + ([greedy[-1]] if greedy is not None and greedy_row else [])
    if not keep_prefixes:
        finished.extend(Hypothesis(ids, lps, "length") for ids, lps in zip(beams, beam_logprobs, strict=True))
    results = prefixes + finished
    unique = {tuple(h.ids): h for h in results}
    return sorted(unique.values(), key=lambda h: h.score(length_penalty), reverse=True)


def _cannot_improve(finished: list[Hypothesis], scores: torch.Tensor, max_tokens: int, length_penalty: float) -> bool:
    """No live beam can beat the best finished hypothesis any more (log-probabilities only fall)."""
    if not finished:
        return False
    best = max(h.score(length_penalty) for h in finished)
    # A live beam's raw score can only drop; its normalised score is at best that over the longest lp.
    most_hopeful = normalised_score(float(scores.max()), max_tokens, length_penalty)
    return most_hopeful <= best


# ---- /v1/generate with beam_width > 1 ------------------------------------------------

SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0}


def check_beam_request(settings: Settings, request: GenerateRequest) -> None:
    """Beam search is deterministic and whole: no sampling settings, no stream (422 naming each)."""
    if request.beam_width == 1:
        if "length_penalty" in request.model_fields_set:
            raise InvalidRequest("length_penalty applies only with beam_width > 1", field="length_penalty")
        return
    if request.beam_width > settings.max_beam_width:
        raise LimitExceeded(
            f"beam_width={request.beam_width} is more than max_beam_width={settings.max_beam_width}",
            limit="max_beam_width",
        )
    conflicts = [name for name, default in SAMPLING_DEFAULTS.items() if getattr(request, name) != default]
    conflicts += [name for name in ("stream", "seed", "stop") if getattr(request, name)]
    conflicts += ["logprobs"] if request.logprobs else []
    if conflicts:
        raise InvalidRequest(
            f"beam_width={request.beam_width} (beam search) cannot be combined with {', '.join(conflicts)}: "
            "beam search picks the most likely continuation, it does not sample or stream",
            conflicts=conflicts,
        )


async def run_beam_search(served: ServedModel, start: SequenceState, **options: Any) -> list[Hypothesis]:
    """`beam_search` from `start` in a worker thread (hold a `beam_search_slot` around it).

    Cancelling the caller (a client that hung up) stops the thread's search within a step.
    """
    stop = threading.Event()
    try:
        return await asyncio.to_thread(
            beam_search, served.checkpoint.model, start.state, start.pending, stop=stop, **options
        )
    finally:
        stop.set()


@contextmanager
def beam_search_slot(served: ServedModel, settings: Settings) -> Iterator[None]:
    """Count a beam search (run off the loop) against max_active_sequences while it runs; 429 when full."""
    busy = served.engine.active_generations + served.beam_searches
    if busy >= settings.max_active_sequences:
        raise ServerBusy(f"{busy} sequences are generating (max_active_sequences={settings.max_active_sequences})")
    served.beam_searches += 1
    try:
        yield
    finally:
        served.beam_searches -= 1


async def beam_generate(models: ModelRegistry, settings: Settings, request: GenerateRequest) -> GenerateResponse:
    """The most likely continuation of the prompt under the length-normalised score."""
    check_beam_request(settings, request)
    prepared = prepare_generation(models, settings, request)
    served, engine = prepared.served, prepared.served.engine
    with beam_search_slot(served, settings):
        start = engine.fresh()
        if prepared.prompt_ids:
            start = (await engine.feed(start, prepared.prompt_ids, with_logprobs=False)).end
        hypotheses = await run_beam_search(
            served,
            start,
            beam_width=request.beam_width,
            max_tokens=prepared.settings.max_tokens,
            length_penalty=request.length_penalty,
            eos_id=prepared.settings.eos_id,
        )
    tokenizer = served.checkpoint.tokenizer
    best = hypotheses[0] if hypotheses else Hypothesis([], [], "length")
    tokens, previous = [], start.pending
    for token_id, logprob in zip(best.ids, best.logprobs, strict=True):
        piece = tokenizer.piece(token_id, previous)
        shown = "" if token_id == prepared.settings.eos_id else piece  # as sampling: the end token adds no text
        tokens.append(GeneratedToken(id=token_id, token=piece, text=shown, logprob=max(logprob, -1e30)))
        previous = token_id
    return GenerateResponse(
        model=served.id,
        text="".join(token.text for token in tokens),
        finish_reason=best.finish,
        tokens=tokens,
        usage=prepared.usage(len(best.ids)),
        beam=BeamSummary(
            beam_width=request.beam_width,
            length_penalty=request.length_penalty,
            logprob=max(best.logprob, -1e30),
            score=max(best.score(request.length_penalty), -1e30),
        ),
    )
