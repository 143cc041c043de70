"""Checks of request sizes against the published limits; each error names its setting."""

from __future__ import annotations

from app.errors import InvalidRequest, LimitExceeded
from app.settings import Settings
from model.tokenizer import Tokenizer


def check_text(settings: Settings, text: str, field: str) -> None:
    if len(text) > settings.max_text_chars:
        raise LimitExceeded(
            f"{field} has {len(text)} characters, more than max_text_chars={settings.max_text_chars}",
            limit="max_text_chars",
        )


def check_count(count: int, limit: int, what: str, setting: str) -> None:
    if count > limit:
        raise LimitExceeded(f"{count} {what}, more than {setting}={limit}", limit=setting)


def check_max_tokens(settings: Settings, max_tokens: int) -> None:
    if max_tokens > settings.max_tokens_limit:
        raise InvalidRequest(
            f"max_tokens={max_tokens} is more than max_tokens_limit={settings.max_tokens_limit}",
            limit="max_tokens_limit",
        )


def check_logprobs(settings: Settings, logprobs: int) -> None:
    if logprobs > settings.max_logprobs:
        raise InvalidRequest(
            f"logprobs={logprobs} is more than max_logprobs={settings.max_logprobs}", limit="max_logprobs"
        )


def check_top_k(tokenizer: Tokenizer, top_k: int | None, model_id: str) -> None:
    if top_k is not None and top_k > tokenizer.vocab_size:
        raise InvalidRequest(
            f"top_k={top_k} is larger than the vocabulary of {model_id!r} ({tokenizer.vocab_size} tokens)"
        )


def stop_strings(settings: Settings, stop: str | list[str] | None) -> tuple[str, ...]:
    strings = [stop] if isinstance(stop, str) else list(stop or [])
    check_count(len(strings), settings.max_stop_strings, "stop strings", "max_stop_strings")
    for s in strings:
        if not s:
            raise InvalidRequest("a stop string must not be empty")
        if len(s) > settings.max_stop_chars:
            raise LimitExceeded(
                f"a stop string has {len(s)} characters, more than max_stop_chars={settings.max_stop_chars}",
                limit="max_stop_chars",
            )
    return tuple(strings)
