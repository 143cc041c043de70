"""vLLM's `use_beam_search` on a completion: the engine's beam search, its n best hypotheses as the choices.

The search is /v1/generate's (`beam_width`): GNMT's length-normalised score, the
greedy path riding along, rows batched with every other in the engine. Its width is
`best_of` or `n`; `length_penalty` is GNMT's alpha (vLLM divides the log-probability by
length^alpha instead: at their defaults, 1.0, both rank by the mean per token only at
long lengths). It does not sample, so the sampling fields conflict with it (400 naming
each), and the answer is whole (no stream).
"""

from __future__ import annotations

import asyncio

from app.api.constraints import CONSTRAINT_FIELDS
from app.api.schemas import SAMPLING_FIELDS
from app.completions.protocol import CompletionChoice, CompletionRequest, CompletionResponse
from app.completions.serving import last_prompt_token, prepare_completion
from app.engine import BeamRun
from app.errors import InvalidRequest, LimitExceeded
from app.models.registry import ModelRegistry
from app.settings import Settings
from model.beam_search import BeamSettings, Hypothesis

# What a completion's beam search honours: the shared fields it has (/v1/generate's beam honours the same) and a
# constraint; every other sampling field in use is refused.
BEAM_HONOURS = ("max_tokens", "stop_at_eos", "allow_unk", *CONSTRAINT_FIELDS)
BEAM_CONFLICTS = (
    *(name for name in SAMPLING_FIELDS if name not in BEAM_HONOURS),
    "stream",
    "min_tokens",
    "stop_token_ids",
    "include_stop_str_in_output",
    "allowed_token_ids",
    "bad_words",
    "prompt_logprobs",
)


def check_beam_request(settings: Settings, request: CompletionRequest) -> None:
    """Beam search is deterministic and whole: no sampling settings, no stream (400 naming each)."""
    width = request.best_of or request.n
    if width > settings.max_beam_width:
        raise LimitExceeded(
            f"use_beam_search with a width of {width} (best_of or n) is more than max_beam_width="
            f"{settings.max_beam_width}",
            limit="max_beam_width",
        )
    conflicts = request.fields_in_use(BEAM_CONFLICTS)
    if conflicts:
        raise InvalidRequest(
            f"use_beam_search cannot be combined with {', '.join(conflicts)}: "
            "beam search picks the most likely continuations, it does not sample or stream",
            field="use_beam_search",
            conflicts=conflicts,
        )


async def complete_with_beams(
    models: ModelRegistry, settings: Settings, request: CompletionRequest
) -> CompletionResponse:
    """Each prompt's search, all admitted at once (EngineBusy when full); its n best as the choices."""
    check_beam_request(settings, request)
    prepared = prepare_completion(models, settings, request)
    engine = prepared.served.engine
    searches: list[tuple[BeamSettings, BeamRun]] = []
    try:
        for plan, prompt in zip(prepared.plans, prepared.prompts, strict=True):
            constrained = plan.constraint is not None
            beam = BeamSettings(
                beam_width=request.best_of or request.n,
                max_tokens=plan.max_tokens,
                length_penalty=request.length_penalty,
                eos_id=prepared.tokenizer.boundary_id if constrained else plan.eos_id,
                allow_unk=request.allow_unk,
                answers=request.n,  # n answers: the search ends early only when n finished ones cannot be beaten
            )
            run = await engine.beam(engine.fresh(), beam, prompt.ids, plan.constraint, request.priority)
            searches.append((beam, run))
        found = await asyncio.gather(*(run.hypotheses() for _, run in searches))
    finally:
        for _, run in searches:
            run.cancel()
    choices, generated = [], 0
    for index, (prompt, hypotheses, (beam, _)) in enumerate(zip(prepared.prompts, found, searches, strict=True)):
        best = hypotheses[: request.n] or [Hypothesis([], [], "length")]
        for rank, hypothesis in enumerate(best):
            generated += len(hypothesis.ids)
            previous, text = last_prompt_token(prepared, prompt), ""
            for token_id in hypothesis.ids:
                text += "" if token_id == beam.eos_id else prepared.tokenizer.piece(token_id, previous)
                previous = token_id
            choices.append(
                CompletionChoice(
                    index=index * request.n + rank,
                    text=prompt.text + text if request.echo else text,
                    logprobs=None,
                    finish_reason="stop" if hypothesis.finish == "eos" else "length",
                    prompt_token_ids=prompt.given(prepared.tokenizer.boundary_id) if request.return_token_ids else None,
                    token_ids=list(hypothesis.ids) if request.return_token_ids else None,
                )
            )
    return prepared.response(choices, prepared.usage(generated, sum(run.cached for _, run in searches)))
