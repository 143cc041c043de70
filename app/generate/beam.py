"""Beam search on /v1/generate: the most likely continuation instead of a sampled one.

The search itself (model/beam_search.py) runs in the engine: its rows join the same
batched decode forward as every sampled row, and it is admitted (or refused with 429)
like any other generation.
"""

from __future__ import annotations

from app.api.schemas import SAMPLING_FIELDS
from app.engine import finite
from app.errors import InvalidRequest, LimitExceeded
from app.generate.protocol import BeamSummary, GeneratedToken, GenerateRequest, GenerateResponse
from app.generate.serving import PreparedGeneration, prepare_generation
from app.models.registry import ModelRegistry
from app.settings import Settings
from model.beam_search import BeamSettings, Hypothesis

# ---- /v1/generate with beam_width > 1 ------------------------------------------------

# What a beam search honours of the sampling fields; every other one in use is refused.
# (A constraint, in CONSTRAINT_FIELDS, is honoured too: the engine masks each beam row.)
BEAM_HONOURS = ("max_tokens", "stop_at_eos", "allow_unk")
BEAM_CONFLICTS = (*(name for name in SAMPLING_FIELDS if name not in BEAM_HONOURS), "stream")


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
    conflicts = request.fields_in_use(BEAM_CONFLICTS)
    if conflicts:
        raise InvalidRequest(
            f"beam_width={request.beam_width} (beam search) cannot be combined with {', '.join(conflicts)}: "
            "beam search picks the most likely continuation, it does not sample or stream",
            conflicts=conflicts,
        )


def prepare_beam(
    models: ModelRegistry, settings: Settings, request: GenerateRequest
) -> tuple[PreparedGeneration, BeamSettings]:
    """A checked beam-search request: the prompt and the search."""
    check_beam_request(settings, request)
    prepared = prepare_generation(models, settings, request)
    constrained = prepared.settings.constraint is not None
    return prepared, BeamSettings(
        beam_width=request.beam_width,
        max_tokens=prepared.settings.max_tokens,
        length_penalty=request.length_penalty,
        # a constraint ends its text at the line boundary (the engine's rule; here so the answer hides it too)
        eos_id=prepared.served.checkpoint.tokenizer.boundary_id if constrained else prepared.settings.eos_id,
        allow_unk=request.allow_unk,
    )


async def search(models: ModelRegistry, settings: Settings, request: GenerateRequest) -> GenerateResponse:
    """The whole answer: the request checked, the search admitted (EngineBusy when full) and run."""
    prepared, beam = prepare_beam(models, settings, request)
    engine = prepared.served.engine
    run = await engine.beam(engine.fresh(), beam, prepared.prompt_ids, prepared.settings.constraint)
    try:
        hypotheses = await run.hypotheses()
    finally:
        run.cancel()  # a no-op once answered; stops the search when this is cancelled (a client gone)
    return beam_response(prepared, beam, hypotheses)


def beam_response(prepared: PreparedGeneration, search: BeamSettings, hypotheses: list[Hypothesis]) -> GenerateResponse:
    """The best hypothesis as /v1/generate's answer, with how the search ranked it."""
    served = prepared.served
    tokenizer = served.checkpoint.tokenizer
    best = hypotheses[0] if hypotheses else Hypothesis([], [], "length")
    tokens = []
    previous = prepared.prompt_ids[-1] if prepared.prompt_ids else tokenizer.boundary_id
    for token_id, logprob in zip(best.ids, best.logprobs, strict=True):
        piece = tokenizer.piece(token_id, previous)
        shown = "" if token_id == search.eos_id else piece  # as sampling: the end token adds no text
        tokens.append(GeneratedToken(id=token_id, token=piece, text=shown, logprob=finite(logprob)))
        previous = token_id
    return GenerateResponse(
        model=served.id,
        text="".join(token.text for token in tokens),
        # a constraint's end token completes its text: "stop", as when sampling
        finish_reason="stop" if prepared.settings.constraint is not None and best.finish == "eos" else best.finish,
        tokens=tokens,
        usage=prepared.usage(len(best.ids)),
        beam=BeamSummary(
            beam_width=search.beam_width,
            length_penalty=search.length_penalty,
            logprob=finite(best.logprob),
            score=finite(best.score(search.length_penalty)),
        ),
    )
