"""Forward/backward model pairs for filling a gap from both sides.

A backward model is trained on the reversed token stream (`rnnlm-train --direction
backward`). It pairs with a forward model over the same vocabulary either by name
(`NAME` + `NAME-backward`) or explicitly (`RNNLM_FILL_PAIRS="fwd:bwd,..."`). Token
lists must be equal, in the same order: the two distributions are combined id by id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from model.checkpoint import Checkpoint

logger = logging.getLogger("app")

BACKWARD_SUFFIX = "-backward"


class PairingError(ValueError):
    """An explicit pair that cannot be served; the message names both models."""


@dataclass(frozen=True)
class Pairs:
    """Forward id -> backward id, and why a by-name candidate was refused (model id -> reason)."""

    backward_of: dict[str, str]
    refused: dict[str, str]

    def partner(self, model_id: str) -> str | None:
        """The other half of `model_id`'s pair (either direction), if any."""
        if model_id in self.backward_of:
            return self.backward_of[model_id]
        for forward, backward in self.backward_of.items():
            if backward == model_id:
                return forward
        return None


def parse_pairs(setting: str | None) -> list[tuple[str, str]]:
    """'fwd:bwd, fwd2:bwd2' -> [(fwd, bwd), ...]; raises PairingError on a malformed entry."""
    pairs: list[tuple[str, str]] = []
    for entry in (setting or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        forward, sep, backward = (part.strip() for part in entry.partition(":"))
        if not sep or not forward or not backward:
            raise PairingError(f"RNNLM_FILL_PAIRS entry {entry!r} is not FORWARD:BACKWARD")
        pairs.append((forward, backward))
    return pairs


def pair_problem(forward_id: str, forward: Checkpoint, backward_id: str, backward: Checkpoint) -> str | None:
    """Why these two checkpoints cannot fill gaps together, or None when they can."""
    if forward.direction != "forward":
        return f"{forward_id!r} is a {forward.direction} model, not a forward one"
    if backward.direction != "backward":
        return (
            f"{backward_id!r} is a {backward.direction} model, not a backward one (train it with --direction backward)"
        )
    if forward.tokenizer.kind != backward.tokenizer.kind:
        return f"{forward_id!r} is a {forward.tokenizer.kind} model but {backward_id!r} is a {backward.tokenizer.kind} model"
    if forward.tokenizer.tokens != backward.tokenizer.tokens:
        differ = sum(a != b for a, b in zip(forward.tokenizer.tokens, backward.tokenizer.tokens, strict=False))
        return (
            f"{forward_id!r} and {backward_id!r} have different token lists "
            f"({forward.tokenizer.vocab_size} and {backward.tokenizer.vocab_size} tokens, {differ} positions differ); "
            "train both on the same corpus with the same vocabulary settings"
        )
    return None


def find_pairs(checkpoints: dict[str, Checkpoint], setting: str | None) -> Pairs:
    """Explicit pairs (a problem is fatal) plus by-name pairs (a problem is logged and the pair refused)."""
    backward_of: dict[str, str] = {}
    refused: dict[str, str] = {}
    for forward_id, backward_id in parse_pairs(setting):
        for model_id in (forward_id, backward_id):
            if model_id not in checkpoints:
                raise PairingError(f"RNNLM_FILL_PAIRS names {model_id!r}, which is not loaded")
        problem = pair_problem(forward_id, checkpoints[forward_id], backward_id, checkpoints[backward_id])
        if problem:
            raise PairingError(f"RNNLM_FILL_PAIRS pair {forward_id}:{backward_id} refused: {problem}")
        if forward_id in backward_of or backward_id in backward_of.values():
            raise PairingError(f"RNNLM_FILL_PAIRS names {forward_id!r} or {backward_id!r} in more than one pair")
        backward_of[forward_id] = backward_id
    taken = set(backward_of) | set(backward_of.values())
    for backward_id, checkpoint in sorted(checkpoints.items()):
        forward_id = backward_id.removesuffix(BACKWARD_SUFFIX)
        if (
            not backward_id.endswith(BACKWARD_SUFFIX)
            or forward_id not in checkpoints
            or {forward_id, backward_id} & taken
        ):
            continue
        problem = pair_problem(forward_id, checkpoints[forward_id], backward_id, checkpoint)
        if problem:
            logger.warning("not pairing %s with %s: %s", forward_id, backward_id, problem)
            refused[forward_id] = refused[backward_id] = problem
            continue
        backward_of[forward_id] = backward_id
    return Pairs(backward_of=backward_of, refused=refused)
