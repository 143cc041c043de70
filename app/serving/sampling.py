"""The one conversion of a request's sampling fields into the engine's GenerationSettings, checked against the limits."""

from __future__ import annotations

from app.engine import GenerationSettings
from app.errors import InvalidRequest
from app.protocol.common import SamplingFields
from app.registry import ServedModel
from app.serving.limits import check_logprobs, check_max_tokens, check_top_k, stop_strings
from app.settings import Settings
from model.sampling import SamplingParams
from model.tokenizer import Tokenizer, WordTokenizer


def generation_settings(
    settings: Settings, served: ServedModel, fields: SamplingFields, history: list[int], min_tokens: int = 0
) -> GenerationSettings:
    """`history` (usually the prompt's ids) seeds the repetition penalty; `min_tokens` is a completion's."""
    tokenizer = served.checkpoint.tokenizer
    default = min(settings.default_max_tokens, settings.max_tokens_limit)
    max_tokens = default if fields.max_tokens is None else fields.max_tokens
    top_logprobs = fields.logprobs or 0  # a completion's null (no logprobs) asks for no alternatives either
    check_max_tokens(settings, max_tokens)
    check_logprobs(settings, top_logprobs)
    check_top_k(tokenizer, fields.top_k, served.id)
    # Only word models have an end-of-text token; a char model's "\n" is ordinary text (use stop=["\n"]).
    eos_id = tokenizer.eos_id if isinstance(tokenizer, WordTokenizer) and fields.stop_at_eos else None
    return GenerationSettings(
        max_tokens=max_tokens,
        sampling=SamplingParams(
            temperature=fields.temperature,
            top_k=fields.top_k,
            top_p=fields.top_p,
            min_p=fields.min_p,
            repetition_penalty=fields.repetition_penalty,
            presence_penalty=fields.presence_penalty,
            frequency_penalty=fields.frequency_penalty,
            logit_bias=logit_bias(tokenizer, fields.logit_bias),
            allow_unk=fields.allow_unk,
        ),
        seed=fields.seed,
        stop=stop_strings(settings, fields.stop),
        eos_id=eos_id,
        top_logprobs=top_logprobs,
        history=tuple(history),
        min_tokens=min_tokens,
    )


def logit_bias(tokenizer: Tokenizer, bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI's `logit_bias` (token id as a string -> bias), each id checked against the vocabulary."""
    checked = []
    for key, value in (bias or {}).items():
        if not (key.isdigit() and int(key) < tokenizer.vocab_size):
            raise InvalidRequest(
                f"logit_bias key {key!r} is not a token id of this model (0..{tokenizer.vocab_size - 1})",
                field="logit_bias",
            )
        checked.append((int(key), float(value)))
    return tuple(checked)
