"""Types shared by the schemas of several features."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.api.constraints import CONSTRAINT_FIELDS, ConstraintFields


def _valid_unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text contains a lone surrogate (\\ud800-\\udfff), which is not valid Unicode") from exc
    return value


# Any text from a client: a JSON string may escape a lone surrogate, which no tokenizer or reply can hold.
Text = Annotated[str, AfterValidator(_valid_unicode)]
NonEmptyText = Annotated[str, Field(min_length=1), AfterValidator(_valid_unicode)]
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]
Probability = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
LogitBias = Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)]


class Request(BaseModel):
    """Strict: unknown fields and wrong types are refused, never guessed."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(default=None, description="a loaded model id; the default model when omitted")


class SamplingFields(ConstraintFields):
    """How a request is sampled, declared once: /v1/generate, session generate and /v1/completions share it.

    The constraint fields (app/api/constraints.py: `structured_outputs`,
    `response_format` and the `guided_*` aliases) come first.

    app/api/conversion.py turns these into the engine's GenerationSettings, in one
    place; a surface that cannot honour some of them (beam search, a completion's
    suffix) refuses those in use, as `fields_in_use` finds them.
    """

    max_tokens: int | None = Field(
        default=None, ge=0, description="tokens to generate (the server's default when omitted)"
    )
    temperature: float = Field(default=1.0, ge=0, allow_inf_nan=False, description="0 = greedy")
    top_k: int = Field(default=0, ge=0, description="keep the k most likely tokens (0 = off)")
    top_p: Probability = Field(default=1.0, description="nucleus sampling mass (1 = off)")
    min_p: float = Field(
        default=0.0, ge=0, le=1, allow_inf_nan=False, description="drop tokens less likely than min_p x the top one"
    )
    repetition_penalty: float = Field(default=1.0, gt=0, allow_inf_nan=False, description="CTRL penalty (1 = off)")
    presence_penalty: float = Field(
        default=0.0, ge=-2, le=2, allow_inf_nan=False, description="OpenAI's: minus this for each generated token seen"
    )
    frequency_penalty: float = Field(
        default=0.0, ge=-2, le=2, allow_inf_nan=False, description="OpenAI's: minus this times each token's count"
    )
    logit_bias: dict[str, LogitBias] | None = Field(
        default=None, description="token id (as a string) -> bias added to its logit, -100..100"
    )
    stop: Text | list[Text] | None = Field(default=None, description="stop strings; the text ends before the first one")
    seed: Seed | None = Field(
        default=None, description="same request + same seed = same text; choice i of n draws from seed + i"
    )
    logprobs: int = Field(
        default=0, ge=0, description="top alternatives (raw model log-probabilities) per generated token"
    )
    stop_at_eos: bool = Field(default=True, description="word models: finish with 'eos' when <eos> is generated")
    allow_unk: bool = Field(
        default=False, description="sample or choose the <unk> token; by default it is never generated"
    )

    def fields_in_use(self, names: Iterable[str]) -> list[str]:
        """Those of `names` whose value differs from this request type's default, in the order given."""
        declared = type(self).model_fields
        return [name for name in names if getattr(self, name) != declared[name].get_default(call_default_factory=True)]


# The sampling fields proper, in declared order; the constraint fields (CONSTRAINT_FIELDS) are walked on their own,
# as a request takes at most one of them.
SAMPLING_FIELDS = tuple(name for name in SamplingFields.model_fields if name not in CONSTRAINT_FIELDS)


class TokenLogprob(BaseModel):
    id: int
    token: str
    logprob: float


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


def event_stream_response(events: list[str] | None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI for a route that answers `"stream": true` with Server-Sent Events beside its JSON answer.

    The schema is that of one event: with `events`, each is named and carries one JSON object;
    without (OpenAI's format), each is unnamed and its data is JSON or the final `[DONE]`.
    """
    if events is None:
        event: dict[str, Any] = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
    else:
        event = {
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"enum": events},
                "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": {"type": "object"}},
            },
        }
    return {
        200: {
            "description": 'the JSON answer; with "stream": true Server-Sent Events, one per token, then the last',
            "content": {"text/event-stream": {"schema": event}},
        }
    }
