"""The AWD-LSTM regularisers: off in eval mode, the plain network at zero, fresh masks per step."""

import pytest
import torch

from model.network import RNNLM, ModelConfig


def tiny(cell: str = "lstm", **regularisers: object) -> RNNLM:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=30, cell=cell, embedding_size=8, hidden_size=8, num_layers=2, dropout=0.0, **regularisers
    )  # type: ignore[arg-type]
    return RNNLM(config)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_layer_by_layer_path_at_zero_equals_the_plain_module(cell: str) -> None:
    plain = tiny(cell).train()
    regularised = tiny(cell, variational_dropout=True).train()  # p = 0 everywhere, but the explicit-weight path
    assert regularised.regularised
    regularised.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 30, (3, 11))
    expected, expected_state = plain(ids)
    got, got_state = regularised(ids)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for a, b in zip(
        got_state if isinstance(got_state, tuple) else [got_state],
        expected_state if isinstance(expected_state, tuple) else [expected_state],
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # Gradients flow to the module's own parameters (the fused kernel's backward).
    got.sum().backward()
    assert regularised.rnn.weight_hh_l1.grad is not None and regularised.rnn.weight_hh_l1.grad.abs().sum() > 0


def test_weight_drop_masks_differ_between_steps_and_are_off_in_eval() -> None:
    model = tiny(weight_drop=0.5).train()
    ids = torch.randint(0, 30, (2, 9))
    first, _ = model(ids)
    second, _ = model(ids)
    assert not torch.allclose(first, second)  # a fresh DropConnect mask each forward
    model.eval()
    with torch.no_grad():
        a, _ = model(ids)
        b, _ = model(ids)
        plain = tiny()
        plain.load_state_dict(model.state_dict())
        c, _ = plain.eval()(ids)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)  # eval is the plain network: what the server runs


def test_weight_drop_keeps_the_parameter_itself_intact() -> None:
    model = tiny(weight_drop=0.5).train()
    before = model.rnn.weight_hh_l0.detach().clone()
    model(torch.randint(0, 30, (2, 5)))
    torch.testing.assert_close(model.rnn.weight_hh_l0.detach(), before)


def test_locked_dropout_mask_is_shared_over_time() -> None:
    from model.regularization import locked_dropout

    x = torch.ones(4, 50, 16)
    dropped = locked_dropout(x, 0.5, training=True)
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))  # same mask at every step
    assert set(dropped.unique().tolist()) <= {0.0, 2.0}


def test_embedding_dropout_drops_whole_words() -> None:
    model = tiny(embedding_dropout=0.5).train()
    from model.regularization import embedding_dropout

    ids = torch.tensor([[3, 3, 3, 3, 3, 3]])
    vectors = embedding_dropout(model.embedding, ids, 0.5, training=True)  # (1, 6, E)
    assert torch.equal(vectors, vectors[:, :1].expand_as(vectors))  # a word is dropped everywhere or nowhere


def test_old_config_without_the_new_fields_loads() -> None:
    old = {
        "vocab_size": 10,
        "cell": "lstm",
        "embedding_size": 4,
        "hidden_size": 4,
        "num_layers": 1,
        "dropout": 0.1,
        "tie_weights": True,
        "init_range": 0.1,
    }
    config = ModelConfig.from_dict(old)
    assert config.weight_drop == 0.0 and not config.variational_dropout and config.embedding_dropout == 0.0
    assert (
        ModelConfig.from_dict(
            ModelConfig(vocab_size=10, weight_drop=0.3, variational_dropout=True).to_dict()
        ).weight_drop
        == 0.3
    )
    with pytest.raises(ValueError, match="weight_drop"):
        ModelConfig(vocab_size=10, weight_drop=1.0)
