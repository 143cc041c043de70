"""Training on a CUDA device (skipped without one; `bench/gpu_check.py` runs these)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model.checkpoint import load_checkpoint
from model.network import RNNLM, ModelConfig
from tests.training.conftest import tiny_config
from training.data import Corpus
from training.trainer import train

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("regularised", [False, True])
def test_a_mixed_precision_step_is_finite_and_learns(regularised: bool) -> None:
    torch.manual_seed(0)
    extra = {"variational_dropout": True, "weight_drop": 0.3, "embedding_dropout": 0.1} if regularised else {}
    config = ModelConfig(
        vocab_size=50, embedding_size=64, hidden_size=64, num_layers=2, dropout=0.1, tie_weights=True, **extra
    )  # type: ignore[arg-type]
    model = RNNLM(config).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 50, (8, 33), device="cuda")
    losses = []
    for _ in range(20):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            logits, _ = model(ids[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_weight_drop_keeps_the_cudnn_kernel() -> None:
    """The regularised path must run cuDNN's fused LSTM, not a per-step fallback."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=50, embedding_size=32, hidden_size=32, num_layers=2, weight_drop=0.5, variational_dropout=True
    )
    model = RNNLM(config).cuda().train()
    ids = torch.randint(0, 50, (4, 16), device="cuda")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        logits, _ = model(ids)
        logits.sum().backward()
    names = {event.key for event in profile.key_averages()}
    assert "aten::_cudnn_rnn" in names, sorted(names)
    assert "aten::lstm_cell" not in names and "aten::_thnn_fused_lstm_cell" not in names


def test_a_checkpoint_trained_on_cuda_loads_on_cpu_and_the_reverse(tmp_path: Path, corpus: Corpus) -> None:
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    for trained_on, loaded_on in (("cuda", "cpu"), ("cpu", "cuda")):
        out = tmp_path / trained_on
        train(tiny_config(out, device=trained_on, weight_drop=0.2, variational_dropout=True), corpus=corpus)
        there = load_checkpoint(out, device=trained_on)
        here = load_checkpoint(out, device=loaded_on)
        assert next(here.model.parameters()).device.type == loaded_on
        with torch.no_grad():
            expected, _ = there.model(ids.to(trained_on))
            got, _ = here.model(ids.to(loaded_on))
        torch.testing.assert_close(got.cpu(), expected.cpu(), rtol=1e-4, atol=1e-4)
        assert here.training["device"] == trained_on
