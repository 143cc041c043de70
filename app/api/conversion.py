"""The one conversion of a request's sampling fields into the engine's GenerationSettings, checked against the limits."""

from __future__ import annotations

import json
from typing import Any

from app.api.constraints import ConstraintFields
from app.api.limits import check_logprobs, check_max_tokens, check_top_k, stop_strings
from app.api.schemas import SamplingFields
from app.engine import Constraint, GenerationSettings
from app.engine.constraint import ConstraintKind
from app.errors import InvalidRequest
from app.models.registry import ServedModel
from app.settings import Settings
from model.sampling import SamplingParams
from model.tokenizer import Tokenizer


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
    eos_id = tokenizer.eos_id if fields.stop_at_eos else None
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
        constraint=constraint_of(fields),
    )


# The constraint kinds: (name in structured_outputs and after guided_, the engine's kind, the attribute of structured_outputs).
CONSTRAINT_KINDS: tuple[tuple[str, ConstraintKind, str], ...] = (
    ("choice", "choice", "choice"),
    ("regex", "regex", "regex"),
    ("json", "json", "json_schema"),
    ("grammar", "grammar", "grammar"),
)


def constraint_of(fields: ConstraintFields) -> Constraint | None:
    """The request's one constraint, from whichever field carries it (422 naming them when several do)."""
    outputs = fields.structured_outputs
    given: list[tuple[str, ConstraintKind, Any]] = []
    for name, kind, attribute in CONSTRAINT_KINDS:
        if outputs is not None:
            given.append((f"structured_outputs.{name}", kind, getattr(outputs, attribute)))
        given.append((f"guided_{name}", kind, getattr(fields, f"guided_{name}")))
    response_format = fields.response_format
    if response_format is not None and response_format.type != "text":
        schema = response_format.json_schema.json_schema if response_format.json_schema else {"type": "object"}
        given.append(("response_format", "json", schema))
    found = [_constraint(field, kind, value) for field, kind, value in given if value is not None]
    if len(found) > 1:
        names = [constraint.field for constraint in found]
        raise InvalidRequest(f"give one constraint, not {len(found)}: {', '.join(names)}", conflicts=names)
    return found[0] if found else None


def _constraint(field: str, kind: ConstraintKind, value: Any) -> Constraint:
    if kind == "choice":
        return Constraint.choice(value, field)
    return Constraint(kind, _schema_text(value) if kind == "json" else value, field)


def _schema_text(schema: dict[str, Any] | str) -> str:
    """A JSON schema as its JSON text (sent as an object, or already as text)."""
    return schema if isinstance(schema, str) else json.dumps(schema)


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
