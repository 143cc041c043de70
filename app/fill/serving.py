"""Fill one gap in a text from both sides, with a forward model and (when paired) a backward one.

Word models fill one word. `fast` is a product of experts: log p_fwd(w | left) +
log p_bwd(w | reversed right), renormalised over the vocabulary (without `<unk>` and
`<eos>`); without a backward partner it is the forward distribution alone. `exact`
rescores the best of those candidates by the forward log-probability of everything
from the gap on: log p_fwd(w, right, <eos> | left), i.e. the whole filled text up to a
term shared by all candidates.

Character models fill a span of 1..max_chars characters. A forward beam search from
the left context proposes spans of every length (no line breaks). `fast` scores a span
s by both directions reading across the join: log p_fwd(s + right[:J] | left) +
log p_bwd(rev(s) + rev(left)[-J:] | rev(right)), J = JUNCTION_CHARS, so that a span
which does not lead into the text after it is penalised (the span's own probability
alone always prefers the shortest); `exact` is the forward log-probability of
s + right + end of line given left.

The text is taken to end at the end of a line: the backward model starts from the
boundary token, as it did in training, and `exact` scores the end of line.
"""

from __future__ import annotations

import asyncio
import math

import torch

from app.api.limits import check_text
from app.engine import Engine, SequenceState, finite
from app.errors import InvalidRequest, LimitExceeded
from app.fill.protocol import FillCandidate, FillRequest, FillResponse, MethodUsed
from app.models.registry import ModelRegistry, ServedModel
from app.settings import Settings
from model.beam_search import BeamSettings, Hypothesis
from model.tokenizer import Tokenizer

JUNCTION_CHARS = 8  # characters of the other side each direction reads across the join (char models)
DEFAULT_MAX_CHARS = 8
DEFAULT_RESCORE = 32
MIN_SPAN_BEAM = 8  # beam width of the char span search (at least top_k)


class Gap:
    """A text split at its one gap marker, tokenised on each side."""

    def __init__(self, text: str, marker: str, tokenizer: Tokenizer) -> None:
        count = text.count(marker)
        if count != 1:
            found = "no" if count == 0 else str(count)
            raise InvalidRequest(
                f"text has {found} gap marker{'s' if count > 1 else ''} {marker!r}; exactly one gap is filled per call",
                field="text",
            )
        self.left, _, self.right = text.partition(marker)
        if tokenizer.separator and (self.left[-1:].strip() or self.right[:1].strip()):
            raise InvalidRequest(
                f"for a word model the gap {marker!r} must be a whole word: put whitespace (or the text's start "
                "or end) on both sides of it",
                field="text",
            )
        self.left_ids = tokenizer.encode(self.left).ids
        self.right_ids = tokenizer.encode(self.right).ids

    def filled(self, fill: str) -> str:
        return self.left + fill + self.right


def find_partner(models: ModelRegistry, served: ServedModel) -> ServedModel | None:
    """The backward model paired with `served`; a backward model itself cannot be filled with."""
    partner = models.pairs.partner(served.id)
    if served.checkpoint.direction != "forward":
        hint = f" (its forward partner is {partner!r})" if partner else ""
        raise InvalidRequest(
            f"model {served.id!r} is a {served.checkpoint.direction} model; name a forward model{hint}"
        )
    return models.get(partner) if partner else None


def check_fill_request(settings: Settings, served: ServedModel, request: FillRequest) -> tuple[int, int]:
    """The checked (rescore pool, max_chars); 413/422 naming the field or the limit."""
    check_text(settings, request.text, "text")
    limit = settings.max_fill_candidates
    for name in ("top_k", "rescore"):
        value = getattr(request, name)
        if value is not None and value > limit:
            raise LimitExceeded(f"{name}={value} is more than max_fill_candidates={limit}", limit="max_fill_candidates")
    if request.rescore is not None and request.method != "exact":
        raise InvalidRequest("rescore applies only to method 'exact'", field="rescore")
    rescore = request.rescore or min(max(request.top_k, DEFAULT_RESCORE), limit)
    if rescore < request.top_k:
        raise InvalidRequest(f"rescore={rescore} is less than top_k={request.top_k}", field="rescore")
    if served.level != "char":
        if request.max_chars is not None:
            raise InvalidRequest("max_chars applies only to character models (a word model fills one word)")
        return rescore, 0
    max_chars = request.max_chars or min(DEFAULT_MAX_CHARS, settings.max_fill_chars)
    if max_chars > settings.max_fill_chars:
        raise LimitExceeded(
            f"max_chars={max_chars} is more than max_fill_chars={settings.max_fill_chars}", limit="max_fill_chars"
        )
    return rescore, max_chars


async def fill(models: ModelRegistry, settings: Settings, request: FillRequest) -> FillResponse:
    served = models.get(request.model)
    backward = find_partner(models, served)
    rescore, max_chars = check_fill_request(settings, served, request)
    gap = Gap(request.text, request.gap, served.checkpoint.tokenizer)
    pool = rescore if request.method == "exact" else request.top_k
    if served.level == "char":
        ranked, after_left = await _rank_spans(served, backward, gap, pool, max_chars)
    else:
        ranked, after_left = await _rank_words(served, backward, gap, pool)
    method_used: MethodUsed = "fast" if backward is not None else "forward-only"
    candidates_from = method_used
    rescored = None
    if request.method == "exact":
        ranked = await _rescore(served, gap, after_left, ranked[:rescore])
        method_used, rescored = "exact", len(ranked)
    return FillResponse(
        model=served.id,
        backward_model=backward.id if backward and candidates_from == "fast" else None,
        level=served.level,
        method=request.method,
        method_used=method_used,
        candidates_from=candidates_from,
        rescored=rescored,
        left_tokens=len(gap.left_ids),
        right_tokens=len(gap.right_ids),
        candidates=ranked[: request.top_k],
    )


def _excluded(tokenizer: Tokenizer) -> list[int]:
    """Never a fill: the unknown token, the end of line (a gap is inside one line) and part of a character."""
    unknown = {tokenizer.unk_id} if tokenizer.unk_id is not None else set()
    return sorted({tokenizer.boundary_id} | unknown | tokenizer.partial_ids)


def _candidate(
    gap: Gap, tokenizer: Tokenizer, ids: list[int], score: float, prob: float, forward: float, backward: float | None
) -> FillCandidate:
    # A word is decoded as the start of a line: no leading space (the gap keeps the text's own spaces).
    text = tokenizer.decode(ids)
    return FillCandidate(
        text=text,
        filled=gap.filled(text),
        token_ids=ids,
        score=finite(score),
        prob=prob,
        forward_logprob=finite(forward),
        backward_logprob=None if backward is None else finite(backward),
    )


async def _rank_words(
    served: ServedModel, backward: ServedModel | None, gap: Gap, pool: int
) -> tuple[list[FillCandidate], SequenceState]:
    """The `pool` best words by the combined (or forward-only) distribution; the state after left."""
    tokenizer = served.checkpoint.tokenizer
    forward_query = served.engine.next_token(served.engine.fresh(), gap.left_ids)
    if backward is None:
        forward_result = await forward_query
        backward_logprobs = None
    else:
        engine = backward.engine
        forward_result, backward_result = await asyncio.gather(
            forward_query, engine.next_token(engine.fresh(), gap.right_ids[::-1])
        )
        backward_logprobs = backward_result.logprobs.double()  # (V,) log p_bwd(w | reversed right)
    forward_logprobs = forward_result.logprobs.double()  # (V,) log p_fwd(w | left)
    combined = forward_logprobs if backward_logprobs is None else forward_logprobs + backward_logprobs
    combined = combined.clone()
    combined[_excluded(tokenizer)] = -math.inf
    scores = torch.log_softmax(combined, dim=-1)  # renormalised over the fillable vocabulary
    order = torch.argsort(scores, descending=True)
    fillable = tokenizer.vocab_size - len(_excluded(tokenizer))
    ranked = []
    for token_id in order[: min(pool, fillable)].tolist():
        score = float(scores[token_id])
        ranked.append(
            _candidate(
                gap,
                tokenizer,
                [token_id],
                score,
                math.exp(score),
                float(forward_logprobs[token_id]),
                None if backward_logprobs is None else float(backward_logprobs[token_id]),
            )
        )
    return ranked, forward_result.end


async def _rank_spans(
    served: ServedModel,
    backward: ServedModel | None,
    gap: Gap,
    pool: int,
    max_chars: int,
) -> tuple[list[FillCandidate], SequenceState]:
    """The `pool` best spans proposed by a forward beam, ranked by both directions reading across the join."""
    tokenizer = served.checkpoint.tokenizer
    engine = served.engine
    after_left = (await engine.feed(engine.fresh(), gap.left_ids, with_logprobs=False)).end
    spans = [h.ids for h in await _propose_spans(served, after_left, max(pool, MIN_SPAN_BEAM), max_chars)]
    if not spans:
        return [], after_left
    boundary = tokenizer.boundary_id
    right_join = [*gap.right_ids, boundary][:JUNCTION_CHARS]
    forward = await _sum_logprobs(engine, after_left, [span + right_join for span in spans])
    backward_scores: list[float] | None = None
    if backward is not None:
        bengine = backward.engine
        after_right = (await bengine.feed(bengine.fresh(), gap.right_ids[::-1], with_logprobs=False)).end
        left_join = [*gap.left_ids[::-1], boundary][:JUNCTION_CHARS]
        backward_scores = await _sum_logprobs(bengine, after_right, [span[::-1] + left_join for span in spans])
    totals = forward if backward_scores is None else [f + b for f, b in zip(forward, backward_scores, strict=True)]
    probs = torch.softmax(torch.tensor(totals, dtype=torch.float64), dim=0).tolist()
    order = sorted(range(len(spans)), key=lambda i: totals[i], reverse=True)
    ranked = [
        _candidate(
            gap,
            tokenizer,
            spans[i],
            totals[i],
            probs[i],
            forward[i],
            None if backward_scores is None else backward_scores[i],
        )
        for i in order[:pool]
    ]
    return ranked, after_left


async def _propose_spans(
    served: ServedModel, start: SequenceState, beam_width: int, max_chars: int
) -> list[Hypothesis]:
    """Every beam of every length 1..max_chars from the left context (a beam search in the engine)."""
    search = BeamSettings(
        beam_width=beam_width,
        max_tokens=max_chars,
        banned=tuple(_excluded(served.checkpoint.tokenizer)),
        keep_prefixes=True,
        with_greedy=False,
    )
    run = await served.engine.beam(start, search)
    return await run.hypotheses()


async def _sum_logprobs(engine: Engine, start: SequenceState, texts: list[list[int]]) -> list[float]:
    """log p(text | start) for each text; submitted together, so the engine feeds them in one batch."""
    results = await asyncio.gather(*(engine.feed(start, ids) for ids in texts))
    return [math.fsum(result.logprobs) for result in results]


async def _rescore(
    served: ServedModel, gap: Gap, after_left: SequenceState, candidates: list[FillCandidate]
) -> list[FillCandidate]:
    """`exact`: the forward log-probability of fill + right + end of line given left, renormalised."""
    if not candidates:
        return []
    tokenizer, engine = served.checkpoint.tokenizer, served.engine
    tail = [*gap.right_ids, tokenizer.boundary_id]
    scores = await _sum_logprobs(engine, after_left, [c.token_ids + tail for c in candidates])
    probs = torch.softmax(torch.tensor(scores, dtype=torch.float64), dim=0).tolist()
    order = sorted(range(len(candidates)), key=lambda i: scores[i], reverse=True)
    return [
        candidates[i].model_copy(
            update={
                "score": finite(scores[i]),
                "prob": probs[i],
                "forward_logprob": finite(scores[i]),
                "backward_logprob": None,
            }
        )
        for i in order
    ]
