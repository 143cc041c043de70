import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from model.checkpoint import load_checkpoint
from model.network import State, state_tensors
from training.data import Corpus
from training.metrics import read_metrics
from training.resume import STATE_JSON, STATE_TENSORS
from training.trainer import Trainer, train

from .conftest import tiny_config


class Recorder(nn.Module):
    """Wraps the model and records the state going into and coming out of every window."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[tuple[list[Tensor], list[Tensor]]] = []

    def forward(self, ids: Tensor, state: State) -> Any:
        logits, new_state = self.model(ids, state)
        self.calls.append(
            ([t.clone() for t in state_tensors(state)], [t.detach().clone() for t in state_tensors(new_state)])
        )
        assert all(t.grad_fn is None for t in state_tensors(state)), "the state must be detached at a window boundary"
        return logits, new_state


def test_hidden_state_is_carried_across_windows_and_reset_each_epoch(tmp_path: Path, corpus: Corpus) -> None:
    trainer = Trainer(tiny_config(tmp_path, epochs=2, bptt=16), corpus=corpus)
    recorder = Recorder(trainer.model)
    trainer.network = recorder
    trainer.run()
    per_epoch = trainer.steps_per_epoch
    assert len(recorder.calls) == 2 * per_epoch
    for step, (state_in, _) in enumerate(recorder.calls):
        if step % per_epoch == 0:  # a new epoch starts from zeros
            assert all(torch.count_nonzero(t) == 0 for t in state_in)
        else:  # otherwise exactly the state the previous window ended with
            previous_out = recorder.calls[step - 1][1]
            for a, b in zip(state_in, previous_out, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
                assert torch.count_nonzero(a) > 0


def grad_norms(trainer: Trainer) -> list[float]:
    """Global gradient norm seen by each optimizer step."""
    norms: list[float] = []
    step = trainer.optimizer.step

    def recording_step(*args: Any, **kwargs: Any) -> Any:
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step  # type: ignore[method-assign]
    return norms


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_gradient_norm_is_clipped_globally(tmp_path: Path, corpus: Corpus, clip: float) -> None:
    trainer = Trainer(tiny_config(tmp_path, clip=clip, init_range=1.0, max_steps=5), corpus=corpus)
    norms = grad_norms(trainer)
    trainer.run()
    assert len(norms) == 5
    if clip:
        assert max(norms) <= clip * (1 + 1e-4)
    else:
        assert max(norms) > 0.05  # without clipping these gradients are larger: the check above can fail


def final_weights(trainer: Trainer) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize(
    "settings",
    [
        {"optimizer": "adamw", "lr": 0.01, "schedule": "cosine", "warmup_steps": 3},
        {"optimizer": "sgd", "momentum": 0.9, "lr": 0.5, "schedule": "plateau", "eval_every": 4, "cell": "gru"},
        # AWD-LSTM's masks draw from the restored RNG too.
        {"optimizer": "sgd", "lr": 0.5, "variational_dropout": True, "weight_drop": 0.3, "embedding_dropout": 0.1},
        # bf16 autocast: the carried state is saved in float32 and the arithmetic repeats exactly.
        {"optimizer": "adamw", "lr": 0.01, "schedule": "cosine", "precision": "bf16"},
        {"optimizer": "sgd", "lr": 0.5, "cell": "gru", "precision": "bf16", "weight_drop": 0.2},
    ],
)
def test_resume_continues_exactly(tmp_path: Path, corpus: Corpus, settings: dict[str, Any]) -> None:
    common = {"dropout": 0.3, "epochs": 3, "bptt": 16, **settings}
    straight = Trainer(tiny_config(tmp_path / "straight", max_steps=30, **common), corpus=corpus)
    assert straight.steps_per_epoch < 30  # the run crosses an epoch boundary
    straight.run()

    first = Trainer(tiny_config(tmp_path / "resumed", max_steps=13, **common), corpus=corpus)
    first.run()
    assert (tmp_path / "resumed" / STATE_JSON).is_file() and (tmp_path / "resumed" / STATE_TENSORS).is_file()
    second = Trainer(
        tiny_config(tmp_path / "resumed", max_steps=30, **common), corpus=corpus, resume_from=tmp_path / "resumed"
    )
    assert second.progress.step == 13
    second.run()

    expected, got = final_weights(straight), final_weights(second)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert second.progress.tokens_seen == straight.progress.tokens_seen


def test_output_directory_is_a_loadable_checkpoint_with_figures(tmp_path: Path, corpus: Corpus) -> None:
    config = tiny_config(tmp_path, level="word", epochs=2, eval_every=5, recipe="tiny-recipe", batch_size=2)
    result = train(config, corpus=corpus)
    checkpoint = load_checkpoint(tmp_path)
    figures = checkpoint.training
    assert figures["recipe"] == "tiny-recipe" and figures["corpus"] == "tiny"
    assert figures["corpus_sha256"] == {"tiny.txt": "0" * 64}
    assert figures["steps"] == result.progress.step > 0
    assert figures["epochs"] == 2 and figures["tokens_seen"] > 0 and figures["elapsed_seconds"] >= 0
    assert math.isclose(figures["val_ppl"], math.exp(figures["val_loss_nats"]))
    assert figures["test_ppl"] > 1 and checkpoint.direction == "forward"
    valid = [r for r in read_metrics(tmp_path) if r["kind"] == "valid"]
    assert min(r["loss"] for r in valid) == pytest.approx(figures["val_loss_nats"])
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert checkpoint.tokenizer.kind == "word" and "<eos>" in checkpoint.tokenizer.tokens


def test_char_model_reports_bits_per_char(tmp_path: Path, corpus: Corpus) -> None:
    figures = train(tiny_config(tmp_path, max_steps=4), corpus=corpus).figures
    assert figures["val_bpc"] == pytest.approx(figures["val_loss_nats"] / math.log(2))
    assert figures["test_bpc"] == pytest.approx(figures["test_loss_nats"] / math.log(2))


def test_backward_model_is_recorded_as_backward(tmp_path: Path, corpus: Corpus) -> None:
    train(tiny_config(tmp_path, max_steps=3, direction="backward"), corpus=corpus)
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.direction == "backward" and checkpoint.training["direction"] == "backward"


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_budget_stops_the_run(tmp_path: Path, corpus: Corpus, clock: str) -> None:
    config = tiny_config(tmp_path, epochs=1000, max_minutes=0.01, log_every=1, budget_clock=clock)
    result = train(config, corpus=corpus)
    assert result.progress.step > 0 and result.progress.epoch < 1000
    assert result.figures["elapsed_seconds"] < 0.6 + 10  # the budget, plus one step and a validation


def test_early_stopping_after_patience(tmp_path: Path, corpus: Corpus) -> None:
    # lr so high that validation never improves after the first epoch
    result = train(tiny_config(tmp_path, epochs=50, patience=2, lr=1e3, clip=0.0, schedule="constant"), corpus=corpus)
    assert result.progress.epoch < 50
