"""`--precision`: bf16 autocast with float32 master weights, state and loss; `auto` asks the device."""

from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import load_checkpoint
from model.precision import bf16_supported
from training import trainer as trainer_module
from training.config import build_config
from training.data import Corpus
from training.metrics import read_metrics
from training.trainer import Trainer, resolve_precision, train

from .conftest import tiny_config


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_precision_is_recorded_in_config_json(tmp_path: Path, corpus: Corpus, precision: str) -> None:
    train(tiny_config(tmp_path, precision=precision, max_steps=4), corpus=corpus)
    figures = load_checkpoint(tmp_path).training
    assert figures["precision"] == precision and figures["config"]["precision"] == precision


def test_auto_is_recorded_as_what_it_chose(tmp_path: Path, corpus: Corpus) -> None:
    train(tiny_config(tmp_path, precision="auto", max_steps=2), corpus=corpus)
    figures = load_checkpoint(tmp_path).training
    assert figures["precision"] == ("bf16" if bf16_supported("cpu") else "fp32")
    assert figures["config"]["precision"] == "auto"  # a resume on another machine chooses again


@pytest.mark.parametrize("supported", [True, False])
def test_auto_follows_the_device_probe(
    tmp_path: Path, corpus: Corpus, monkeypatch: pytest.MonkeyPatch, supported: bool
) -> None:
    asked: list[torch.device] = []

    def probe(device: torch.device) -> bool:
        asked.append(device)
        return supported

    monkeypatch.setattr(trainer_module, "bf16_supported", probe)
    trainer = Trainer(tiny_config(tmp_path, precision="auto"), corpus=corpus)
    assert trainer.precision == ("bf16" if supported else "fp32")
    assert asked == [torch.device("cpu")]


def test_auto_is_fp32_on_a_device_without_bf16_kernels() -> None:
    assert resolve_precision("auto", torch.device("meta")) == "fp32"
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # asked for: emulated where not native


def test_a_bf16_run_computes_in_bf16_learns_and_keeps_float32_master_weights(tmp_path: Path, corpus: Corpus) -> None:
    config = tiny_config(tmp_path, precision="bf16", optimizer="adamw", lr=0.01, epochs=4, bptt=16, log_every=4)
    trainer = Trainer(config, corpus=corpus)
    inputs = torch.from_numpy(np.ascontiguousarray(trainer.train_data[:, :16])).long().to(trainer.device)
    with trainer.autocast():
        logits, _ = trainer.model(inputs, trainer.hidden)
    assert logits.dtype == torch.bfloat16  # the matmuls ran in bf16
    trainer.run()
    losses = [r["loss"] for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert len(losses) >= 4 and losses[-1] < losses[0] - 0.3
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(
        value.dtype == torch.float32
        for group in trainer.optimizer.state.values()
        for name, value in group.items()
        if name != "step"
    )
    assert all(
        t.dtype == torch.float32 for t in (trainer.hidden if isinstance(trainer.hidden, tuple) else [trainer.hidden])
    )


def test_the_progress_line_shows_the_precision(
    tmp_path: Path, corpus: Corpus, capsys: pytest.CaptureFixture[str]
) -> None:
    train(tiny_config(tmp_path, precision="bf16", max_steps=6, progress=True), corpus=corpus)
    assert "bf16" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("saved", "precision"),
    [
        ({"amp": True, "device": "cuda"}, "bf16"),
        ({"amp": True}, "fp32"),  # amp only ever applied on CUDA
        ({"amp": "false", "device": "cuda"}, "fp32"),
    ],
)
def test_a_config_from_before_precision_keeps_its_arithmetic(saved: dict[str, object], precision: str) -> None:
    assert build_config(saved).precision == precision
