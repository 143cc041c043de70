"""Training-time regularisers of AWD-LSTM (Merity et al. 2017), all off in eval mode.

- locked (variational) dropout: one mask per sequence, reused at every time step
  (Gal & Ghahramani 2016), on the embeddings, between layers and before the decoder;
- embedding dropout: whole words dropped from the embedding matrix;
- weight drop: DropConnect (Wan et al. 2013) on the hidden-to-hidden matrices, one mask
  per forward, so the recurrent kernel stays the fused one (cuDNN on a GPU): the dropped
  matrices are handed to the same `torch._VF` call that `nn.LSTM` makes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout of x (B, T, D) with one mask per row and feature, shared over the T steps."""
    if not training or p == 0.0:
        return x
    mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1.0 - p) / (1.0 - p)  # (B, 1, D)
    return x * mask


def embedding_dropout(embedding: nn.Embedding, ids: Tensor, p: float, training: bool) -> Tensor:
    """Look ids up in an embedding whose rows (words) are dropped with probability p."""
    if not training or p == 0.0:
        looked_up: Tensor = embedding(ids)
        return looked_up
    weight = embedding.weight
    mask = weight.new_empty(weight.shape[0], 1).bernoulli_(1.0 - p) / (1.0 - p)  # (V, 1)
    return F.embedding(ids, weight * mask)


def layer_params(rnn: nn.RNNBase, layer: int, weight_drop: float, training: bool) -> list[Tensor]:
    """[w_ih, w_hh, b_ih, b_hh] of one layer, w_hh DropConnected when training."""
    w_hh: Tensor = getattr(rnn, f"weight_hh_l{layer}")
    if training and weight_drop > 0.0:
        w_hh = F.dropout(w_hh, weight_drop, training=True)
    return [
        getattr(rnn, f"weight_ih_l{layer}"),
        w_hh,
        getattr(rnn, f"bias_ih_l{layer}"),
        getattr(rnn, f"bias_hh_l{layer}"),
    ]


def run_layer(
    rnn: nn.RNNBase, params: list[Tensor], x: Tensor, state: Tensor | tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
    """One layer of `rnn` over x (B, T, in) with explicit weights: the module's own kernel."""
    if rnn.mode == "LSTM":
        assert isinstance(state, tuple)
        output, h, c = torch._VF.lstm(x, state, params, True, 1, 0.0, True, False, True)
        return output, (h, c)
    assert isinstance(state, Tensor)
    kernel = torch._VF.gru if rnn.mode == "GRU" else torch._VF.rnn_tanh
    output, h = kernel(x, state, params, True, 1, 0.0, True, False, True)
    return output, h
