"""A completion with a `suffix`: the middle is filled by /v1/fill's search with the model's backward partner."""

from __future__ import annotations

from app.api.constraints import CONSTRAINT_FIELDS
from app.api.schemas import SAMPLING_FIELDS
from app.completions.protocol import CompletionChoice, CompletionRequest
from app.errors import InvalidRequest
from app.fill.protocol import FillRequest
from app.fill.serving import fill
from app.models.registry import ModelRegistry, ServedModel
from app.settings import Settings

SUFFIX_GAP = "\x00"  # the gap marker of a suffix completion (never in a text by accident)

# What a fill cannot honour: every sampling field but max_tokens, a constraint, and a completion's sampling extras.
SUFFIX_CONFLICTS = (
    *(name for name in SAMPLING_FIELDS if name != "max_tokens"),
    *CONSTRAINT_FIELDS,
    "min_tokens",
    "stream",
    "echo",
    "best_of",
    "use_beam_search",
    "stop_token_ids",
    "include_stop_str_in_output",
    "ignore_eos",
    "allowed_token_ids",
    "bad_words",
    "prompt_logprobs",
    "truncate_prompt_tokens",
    "return_token_ids",
    "return_tokens_as_token_ids",
)


def check_suffix(
    models: ModelRegistry, served: ServedModel, request: CompletionRequest, prompts: int, prompt: str
) -> None:
    """A suffix is filled by /v1/fill's search, which needs a backward partner and does not sample."""
    partner = models.pairs.partner(served.id)
    if partner is None or served.checkpoint.direction != "forward":
        raise InvalidRequest(
            f"suffix needs a backward partner of model {served.id!r} to fill the middle, and none is loaded "
            "(train one with --direction backward; see docs/api.md#fill)",
            field="suffix",
        )
    conflicts = request.fields_in_use(SUFFIX_CONFLICTS)
    if prompts > 1:
        conflicts.append("prompt (a list)")
    if conflicts:
        raise InvalidRequest(
            f"suffix (filling the middle, a search over both directions) cannot be combined with "
            f"{', '.join(conflicts)}",
            field="suffix",
            conflicts=conflicts,
        )
    if served.level == "word" and (prompt[-1:].strip() or (request.suffix or "")[:1].strip()):
        raise InvalidRequest(
            "a word model fills one whole word: end the prompt and start the suffix with whitespace", field="suffix"
        )


async def fill_middle(
    models: ModelRegistry, settings: Settings, served: ServedModel, request: CompletionRequest, prompt: str
) -> tuple[list[CompletionChoice], int]:
    """The suffix completion's choices (the fill's candidates) and the tokens they hold."""
    max_chars = min(max(request.max_tokens, 1), settings.max_fill_chars)
    answer = await fill(
        models,
        settings,
        FillRequest(
            model=served.id,
            text=prompt + SUFFIX_GAP + (request.suffix or ""),
            gap=SUFFIX_GAP,
            top_k=request.n,
            max_chars=max_chars if served.level == "char" else None,
        ),
    )
    choices = [
        CompletionChoice(index=index, text=candidate.text, logprobs=None, finish_reason="stop")
        for index, candidate in enumerate(answer.candidates)
    ]
    return choices, sum(len(candidate.token_ids) for candidate in answer.candidates)
