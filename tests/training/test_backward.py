"""Backward models: trained on the reversed stream, they read reversed text as a forward model reads text."""

from __future__ import annotations

import math
from pathlib import Path

from model.checkpoint import Checkpoint, load_checkpoint
from model.inference import feed_tokens, fresh_sequences
from training.batching import encode_stream
from training.config import load_recipe, recipe_names
from training.data import Corpus
from training.trainer import train

from .conftest import tiny_config, tiny_text


def nats_per_token(checkpoint: Checkpoint, text: str, direction: str) -> float:
    """Mean -log p of the text's token stream (reversed for "backward"), from the start of a line."""
    ids = encode_stream(checkpoint.tokenizer, text, direction).tolist()
    state, pending = fresh_sequences(checkpoint.model, checkpoint.tokenizer.boundary_id, 1)
    logprobs, _, _ = feed_tokens(checkpoint.model, state, pending, [ids])
    return -float(logprobs[0].double().mean())


def test_a_backward_model_scores_reversed_text_as_the_forward_model_scores_text(tmp_path: Path) -> None:
    corpus = Corpus("tiny", tiny_text(150, 1), tiny_text(30, 2), tiny_text(30, 3), {"tiny.txt": "0" * 64}, "test")
    settings = {"optimizer": "adamw", "lr": 0.01, "epochs": 2, "hidden_size": 32, "embedding_size": 32}
    train(tiny_config(tmp_path / "forward", **settings), corpus=corpus)
    train(tiny_config(tmp_path / "backward", direction="backward", **settings), corpus=corpus)
    forward, backward = load_checkpoint(tmp_path / "forward"), load_checkpoint(tmp_path / "backward")
    assert (forward.direction, backward.direction) == ("forward", "backward")
    assert forward.tokenizer.tokens == backward.tokenizer.tokens  # same corpus, same vocabulary: they can pair

    text = corpus.test
    uniform = math.log(forward.tokenizer.vocab_size)
    forward_on_text = nats_per_token(forward, text, "forward")
    backward_on_reversed = nats_per_token(backward, text, "backward")
    # Both learned their direction well (far below a uniform guess) and about equally well.
    assert forward_on_text < 0.6 * uniform and backward_on_reversed < 0.6 * uniform
    assert abs(backward_on_reversed - forward_on_text) < 0.15 * forward_on_text
    # And each reads its own direction better than the other's: "eht" is not English.
    assert backward_on_reversed < nats_per_token(backward, text, "forward") - 0.2
    assert forward_on_text < nats_per_token(forward, text, "backward") - 0.2


def test_each_backward_recipe_is_its_forward_recipe_trained_right_to_left() -> None:
    names = recipe_names()
    backward = [name for name in names if name.endswith("-backward")]
    assert {"word-ptb-quick-backward", "word-ptb-small-backward", "char-shakespeare-quick-backward"} <= set(backward)
    for name in backward:
        forward_name = name.removesuffix("-backward")
        assert forward_name in names, f"{name} has no forward recipe {forward_name}"
        values, forward_values = load_recipe(name), load_recipe(forward_name)
        assert values.pop("direction") == "backward" and forward_values.pop("direction", "forward") == "forward"
        for recipe in (values, forward_values):
            recipe.pop("expected"), recipe.pop("recipe")
        assert values == forward_values, f"{name} differs from {forward_name} in more than the direction"
