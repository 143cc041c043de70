"""Log-probabilities of whole texts, with KenLM's bos/eos meaning.

bos=true conditions the first token on the start of a line (the boundary token, as in
training); bos=false gives an RNN no start context, so the first token is context only
and is not scored. eos=true also scores the boundary token after the text.
"""

from __future__ import annotations

import asyncio
import math

from app.api.limits import check_count, check_text
from app.engine import Engine, SequenceState
from app.errors import InvalidRequest
from app.models.registry import ModelRegistry
from app.score.protocol import ScoredToken, ScoreRequest, ScoreResponse, TextScore
from app.settings import Settings
from model.tokenizer import Encoding, Tokenizer

LN2 = math.log(2)


async def score(models: ModelRegistry, settings: Settings, request: ScoreRequest) -> ScoreResponse:
    served = models.get(request.model)
    tokenizer = served.checkpoint.tokenizer
    check_count(len(request.texts), settings.max_score_texts, "texts", "max_score_texts")
    for index, text in enumerate(request.texts):
        check_text(settings, text, f"texts[{index}]")
    encodings = [tokenizer.encode(text) for text in request.texts]
    plans = [
        _plan(served.engine, tokenizer, enc, index, request.bos, request.eos) for index, enc in enumerate(encodings)
    ]
    # Submitted together, so the engine feeds them in one batched forward.
    fed = await asyncio.gather(*(served.engine.feed(start, ids) for start, ids, _ in plans))
    results = [
        _summarise(tokenizer, ids, unknown, result.logprobs)
        for (_, ids, unknown), result in zip(plans, fed, strict=True)
    ]
    return ScoreResponse(model=served.id, bos=request.bos, eos=request.eos, results=results)


def _plan(
    engine: Engine, tokenizer: Tokenizer, encoding: Encoding, index: int, bos: bool, eos: bool
) -> tuple[SequenceState, list[int], list[bool]]:
    """Where to start, which ids to score, and which of those are unknown."""
    ids, unknown = list(encoding.ids), list(encoding.unknown)
    if eos:
        ids.append(tokenizer.boundary_id)
        unknown.append(False)
    start = engine.fresh()
    if not bos and ids:
        start = SequenceState(start.state, ids[0])  # no start context: the first token only conditions
        ids, unknown = ids[1:], unknown[1:]
    if not ids:
        raise InvalidRequest(
            f"texts[{index}] has no token to score ({len(encoding.ids)} tokens, bos={str(bos).lower()}, "
            f"eos={str(eos).lower()})"
        )
    return start, ids, unknown


def _summarise(tokenizer: Tokenizer, ids: list[int], unknown: list[bool], logprobs: list[float]) -> TextScore:
    total = math.fsum(logprobs)
    count = len(ids)
    bits_per_token = -total / LN2 / count
    return TextScore(
        logprob=total,
        token_count=count,
        perplexity=math.exp(min(-total / count, 700.0)),
        bits_per_token=bits_per_token,
        bits_per_char=_bits_per_char(tokenizer, ids, total, bits_per_token),
        unknown_count=sum(unknown),
        tokens=[
            ScoredToken(id=i, token=tokenizer.tokens[i], logprob=lp, unknown=u)
            for i, lp, u in zip(ids, logprobs, unknown, strict=True)
        ],
    )


def _bits_per_char(tokenizer: Tokenizer, ids: list[int], total: float, bits_per_token: float) -> float | None:
    """Over the characters the scored tokens spell (the line end included), where the tokenizer knows them."""
    chars = tokenizer.characters(ids)
    if chars == len(ids):  # a token a character: the same figure, to the last bit
        return bits_per_token
    return -total / LN2 / chars if chars else None
