"""Schemas of /v1/completions: OpenAI's text completions request with vLLM's `CompletionRequest` fields.

Every field either of them defines is declared here and is either honoured or, where
this server cannot do what it asks (a field for a transformer's KV cache, LoRA, prompt
embeddings, ...), refused with a 400 naming it and saying why (`REFUSED`, checked by the
serving). A field neither defines is refused too, as OpenAI's own API refuses it
("Unrecognized request argument"). `null` for any field but `prompt` means its default,
as OpenAI's schema makes them nullable. Ours beyond both: `stop_at_eos` and `allow_unk`
(the shared sampling fields).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.api.schemas import SamplingFields, Text, Usage

TokenIds = list[int]

# vLLM's seed is any signed 64-bit integer: -1 is "random", other negatives are mapped to 2^64 - 1 + seed
# (torch.Generator.manual_seed's rule, which vLLM's sampler applies).
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


def _nulls_are_defaults(data: Any, keep: tuple[str, ...] = ()) -> Any:
    """OpenAI's fields are nullable: a `null` means the field's default (dropped before validation)."""
    if isinstance(data, dict):
        return {key: value for key, value in data.items() if value is not None or key in keep}
    return data


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = Field(default=False, description="send a last chunk with the usage and no choices")
    continuous_usage_stats: bool = Field(
        default=False, description="vLLM's: every chunk carries the usage so far (prompt, completion tokens)"
    )
    include_obfuscation: bool = Field(
        default=False, description="OpenAI's random padding of chunks; refused (400) when true"
    )

    @model_validator(mode="before")
    @classmethod
    def _nullable(cls, data: Any) -> Any:
        return _nulls_are_defaults(data)


class CompletionRequest(SamplingFields):
    """OpenAI's fields, then vLLM's; the sampling fields are the shared ones, with OpenAI's defaults where they differ."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # OpenAI's, in its reference's order
    model: str | None = None
    prompt: Text | list[Text] | TokenIds | list[TokenIds] = Field(
        description="a text, token ids, or a list of either (one choice set per prompt)"
    )
    best_of: int | None = Field(default=None, ge=1, description="sample this many, return the n likeliest per token")
    echo: bool = Field(default=False, description="prepend the prompt (with its logprobs when logprobs is set)")
    logprobs: int | None = Field(  # type: ignore[assignment]  # OpenAI's null (no logprobs) is not our 0
        default=None, ge=0, description="the sampled token's logprob and up to this many alternatives; null = none"
    )
    max_tokens: int = Field(default=16, ge=0)
    n: int = Field(default=1, ge=1, description="choices per prompt: the prompt is fed once, its state forked n ways")
    seed: int | None = Field(  # a signed 64-bit seed, as vLLM takes it
        default=None, ge=SEED_MIN, le=SEED_MAX, description="same request + same seed = same text; -1 = random"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    suffix: Text | None = Field(default=None, description="text after the completion: filled with the backward partner")
    user: str | None = Field(default=None, description="accepted and ignored (OpenAI's end-user label)")

    # vLLM's sampling parameters
    top_k: int = Field(default=0, ge=-1, description="keep the k most likely tokens (0 or -1 = off)")
    use_beam_search: bool = Field(default=False, description="beam search (width best_of or n); returns n beams")
    length_penalty: float = Field(
        default=1.0, ge=0, allow_inf_nan=False, description="beam search only: GNMT's length-normalisation alpha"
    )
    stop_token_ids: list[int] = Field(default_factory=list, description="token ids that end the text (not shown)")
    include_stop_str_in_output: bool = Field(default=False, description="keep the stop string at the text's end")
    ignore_eos: bool = Field(default=False, description="word models: keep generating after <eos>")
    min_tokens: int = Field(default=0, ge=0, description="no end of text (<eos>, stop token ids) before this many")
    skip_special_tokens: bool = Field(default=True, description="special tokens are never shown: false is refused")
    spaces_between_special_tokens: bool = Field(default=True, description="accepted: no special token is shown")
    truncate_prompt_tokens: int | None = Field(
        default=None, ge=-1, description="keep only this many prompt tokens (-1: all; an RNN has no context window)"
    )
    truncation_side: Literal["left", "right"] = Field(
        default="left", description="which end truncate_prompt_tokens cuts: left keeps the last tokens"
    )
    allowed_token_ids: list[int] | None = Field(default=None, description="only these tokens may be generated")
    bad_words: list[str] = Field(default_factory=list, description="words (one or several tokens each) never generated")
    prompt_logprobs: int | None = Field(
        default=None, ge=0, description="each prompt token's logprob and up to this many alternatives (first: null)"
    )

    # vLLM's extra parameters
    add_special_tokens: bool = Field(default=True, description="accepted: no special token is ever added")
    guided_decoding_backend: str | None = Field(default=None, description="llguidance (or auto); others refused")
    guided_whitespace_pattern: str | None = Field(default=None, description="refused: not offered")
    priority: int = Field(
        default=0,
        description="lower is fed first (vLLM's); admission is at once: a full engine is a 429 whatever it is",
    )
    request_id: str | None = Field(default=None, description="the answer's id is cmpl-<request_id>")
    return_tokens_as_token_ids: bool = Field(default=False, description='logprobs tokens as "token_id:<id>"')
    return_token_ids: bool = Field(default=False, description="each choice carries prompt_token_ids and token_ids")
    prompt_embeds: Any = Field(default=None, description="refused: a prompt is text or token ids")
    logits_processors: Any = Field(default=None, description="refused: no custom logits processors")
    cache_salt: Any = Field(default=None, description="refused: the prefix-state cache is not salted")
    kv_transfer_params: Any = Field(default=None, description="refused: a recurrent model has no KV cache")
    vllm_xargs: Any = Field(default=None, description="refused: no custom extensions")

    @model_validator(mode="before")
    @classmethod
    def _nullable(cls, data: Any) -> Any:
        return _nulls_are_defaults(data, keep=("prompt",))

    @model_validator(mode="after")
    def _as_vllm_means_them(self) -> CompletionRequest:
        """vLLM's spellings of "off" and "random": top_k -1 is 0, seed -1 is none; a negative seed is
        mapped into 64 bits as torch.Generator.manual_seed maps it (2^64 - 1 + seed)."""
        if self.top_k == -1:
            self.top_k = 0
        if self.seed == -1:
            self.seed = None
        elif self.seed is not None and self.seed < 0:
            self.seed = 2**64 - 1 + self.seed
        return self


def _is(default: object) -> Callable[[Any], bool]:
    return lambda value: value == default


# The fields this server cannot honour: (what it accepts, why the rest is refused). A refused field names itself.
REFUSED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "prompt_embeds": (_is(None), "prompt embeddings are not taken: send the prompt as text or token ids"),
    "logits_processors": (_is(None), "custom logits processors are not offered"),
    "cache_salt": (_is(None), "the prefix-state cache is per model and not salted"),
    "kv_transfer_params": (_is(None), "a recurrent model has no KV cache to transfer (no disaggregated prefill)"),
    "vllm_xargs": (_is(None), "no custom extensions are offered"),
    "skip_special_tokens": (_is(True), "special tokens (<eos>, <unk>) are never shown as text here"),
    "guided_decoding_backend": (
        lambda value: value in (None, "auto", "llguidance", "guidance"),
        "constraints are matched by llguidance only",
    ),
    "guided_whitespace_pattern": (_is(None), "a JSON constraint's whitespace pattern cannot be set"),
}


# OpenAI's finish reasons: the engine's `eos` (a word model generated <eos>) is reported as `stop`.
CompletionFinishReason = Literal["length", "stop"]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class PromptLogprob(BaseModel):
    """vLLM's Logprob: the log-probability, the rank (1 = likeliest; null when outside the top asked) and the text."""

    logprob: float
    rank: int | None
    decoded_token: str


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: CompletionFinishReason | None
    stop_reason: int | str | None = Field(
        default=None, description="vLLM's: the stop string or stop token id that ended the text"
    )
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = Field(
        default=None, description="vLLM's: per prompt token (keyed by token id), the first null"
    )
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="prompt tokens whose state came from the prefix-state cache")


class CompletionUsage(Usage):
    prompt_tokens_details: PromptTokensDetails | None = None

    @classmethod
    def counted(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> CompletionUsage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
        )


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = Field(
        default=None, description="rnnlm-<sha256 of the weights, 16 hex digits>: changes when the weights do"
    )
    choices: list[CompletionChoice]
    usage: CompletionUsage | None
