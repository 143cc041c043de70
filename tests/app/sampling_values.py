"""A value other than the default for every declared sampling field (tests that walk them all)."""

from __future__ import annotations

from typing import Any

NON_DEFAULT: dict[str, Any] = {
    "max_tokens": 3,
    "temperature": 0.7,
    "top_k": 5,
    "top_p": 0.9,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "presence_penalty": 0.3,
    "frequency_penalty": 0.2,
    "logit_bias": {"3": 1.5},
    "stop": ["x"],
    "seed": 4,
    "logprobs": 1,
    "stop_at_eos": False,
    "allow_unk": True,
}
