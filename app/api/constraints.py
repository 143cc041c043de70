"""The constraint fields a generating request may carry: vLLM's `structured_outputs`, OpenAI's `response_format`.

`ConstraintFields` is part of the shared sampling fields (app/api/schemas.py imports
it, so this module imports nothing of the protocol's), so
/v1/generate, session generate and /v1/completions take the same ones; the legacy
`guided_*` fields are aliases of `structured_outputs`. At most one constraint per
request; app/api/conversion.py turns it into the engine's `Constraint`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

JsonSchema = dict[str, Any] | str  # a JSON schema as an object, or as its JSON text


class StructuredOutputs(BaseModel):
    """Exactly one of: a list of choices, a regex, a JSON schema, a grammar (Lark or GBNF)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    choice: list[str] | None = Field(default=None, min_length=1, description="the text is exactly one of these")
    regex: str | None = Field(default=None, description="the text full-matches this regex (Rust regex syntax)")
    json_schema: JsonSchema | None = Field(
        default=None, alias="json", description="the text is JSON valid under this schema"
    )
    grammar: str | None = Field(
        default=None, description="the text is a sentence of this grammar: Lark (llguidance's dialect) or GBNF"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        given = [name for name in ("choice", "regex", "json_schema", "grammar") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of choice, regex, json, grammar")
        return self


class JsonSchemaFormat(BaseModel):
    """OpenAI's `response_format.json_schema`: a named schema (`strict` is taken; the schema is always enforced)."""

    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)

    name: str = "response"
    description: str | None = None
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: `text` (no constraint), `json_object` (any JSON object) or `json_schema`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError('json_schema is given with type "json_schema", and only then')
        return self


class ConstraintFields(BaseModel):
    """What the generated text must match; at most one of these per request."""

    structured_outputs: StructuredOutputs | None = Field(
        default=None, description="a choice, regex, JSON schema (json) or grammar the text must match"
    )
    response_format: ResponseFormat | None = Field(
        default=None, description='OpenAI\'s: {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}'
    )
    guided_choice: list[str] | None = Field(default=None, description="legacy alias of structured_outputs.choice")
    guided_regex: str | None = Field(default=None, description="legacy alias of structured_outputs.regex")
    guided_json: JsonSchema | None = Field(default=None, description="legacy alias of structured_outputs.json")
    guided_grammar: str | None = Field(default=None, description="legacy alias of structured_outputs.grammar")


CONSTRAINT_FIELDS = tuple(ConstraintFields.model_fields)
