import pytest
import torch

from model.network import RNNLM, ModelConfig, detach_state


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_carrying_state_equals_one_long_forward(cell: str) -> None:
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=30, cell=cell, embedding_size=8, hidden_size=12, num_layers=2)).eval()  # type: ignore[arg-type]
    ids = torch.randint(0, 30, (3, 20))
    with torch.no_grad():
        whole, _ = model(ids)
        state = None
        pieces = []
        for start in range(0, 20, 7):
            logits, state = model(ids[:, start : start + 7], state)
            state = detach_state(state)
            pieces.append(logits)
    assert whole.shape == (3, 20, 30)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-5, atol=1e-5)


def test_rnn_tanh_is_the_textbook_cell() -> None:
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=5, cell="rnn_tanh", embedding_size=4, hidden_size=3, num_layers=1)).eval()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        _, h_n = model(ids)
        rnn = model.rnn
        h = torch.zeros(3)
        for token in ids[0]:
            x = model.embedding.weight[token]
            h = torch.tanh(rnn.weight_ih_l0 @ x + rnn.bias_ih_l0 + rnn.weight_hh_l0 @ h + rnn.bias_hh_l0)
    assert isinstance(h_n, torch.Tensor)
    torch.testing.assert_close(h_n[0, 0], h)


def test_padded_rows_get_their_own_final_state() -> None:
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=10, cell="lstm", embedding_size=6, hidden_size=6, num_layers=2)).eval()
    short = torch.tensor([[1, 2, 3]])
    padded = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]])
    with torch.no_grad():
        _, (h_alone, _) = model(short)
        _, (h_batch, _) = model(padded, lengths=torch.tensor([3, 5]))
    torch.testing.assert_close(h_batch[:, 0], h_alone[:, 0], rtol=1e-5, atol=1e-6)


def test_weight_tying_shares_and_refuses_mismatched_sizes() -> None:
    model = RNNLM(ModelConfig(vocab_size=10, embedding_size=8, hidden_size=8, tie_weights=True))
    assert model.decoder.weight is model.embedding.weight
    with pytest.raises(ValueError, match="tie_weights"):
        ModelConfig(vocab_size=10, embedding_size=8, hidden_size=9, tie_weights=True)


def test_bad_config_values_are_refused() -> None:
    with pytest.raises(ValueError, match="cell"):
        ModelConfig(vocab_size=10, cell="transformer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(vocab_size=10, dropout=1.5)
