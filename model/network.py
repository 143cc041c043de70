"""The recurrent language model: embedding -> stacked RNN/LSTM/GRU -> linear decoder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from model.regularization import embedding_dropout, layer_params, locked_dropout, run_layer

CellKind = Literal["rnn_tanh", "lstm", "gru"]
CELLS: tuple[str, ...] = ("rnn_tanh", "lstm", "gru")

# An RNN/GRU state is one tensor, an LSTM state an (h, c) pair; each (num_layers, B, hidden).
State = Tensor | tuple[Tensor, Tensor]


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; saved in the checkpoint's config.json."""

    vocab_size: int
    cell: CellKind = "lstm"
    embedding_size: int = 200
    hidden_size: int = 200
    num_layers: int = 2
    dropout: float = 0.2
    tie_weights: bool = False
    init_range: float = 0.1
    # AWD-LSTM regularisers (Merity et al. 2017), training only; the defaults are the plain network.
    variational_dropout: bool = False  # `dropout` masks locked over time, also between layers
    embedding_dropout: float = 0.0  # drop whole words from the embedding matrix
    weight_drop: float = 0.0  # DropConnect on the hidden-to-hidden weights

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, not {self.cell!r}")
        for name in ("vocab_size", "embedding_size", "hidden_size", "num_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("dropout", "embedding_dropout", "weight_drop"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
        if self.tie_weights and self.embedding_size != self.hidden_size:
            raise ValueError(
                f"tie_weights needs embedding_size == hidden_size (got {self.embedding_size} and {self.hidden_size})"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)


class RNNLM(nn.Module):
    """A recurrent language model returning raw logits and the carried state."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.dropout = nn.Dropout(config.dropout)
        rnn_class = {"rnn_tanh": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[config.cell]
        extra = {"nonlinearity": "tanh"} if config.cell == "rnn_tanh" else {}
        self.rnn = rnn_class(
            config.embedding_size,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
            **extra,
        )
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        if config.tie_weights:
            # Press & Wolf 2017, "Using the Output Embedding to Improve Language Models".
            self.decoder.weight = self.embedding.weight
        self.init_weights()

    def init_weights(self) -> None:
        r = self.config.init_range
        nn.init.uniform_(self.embedding.weight, -r, r)
        nn.init.zeros_(self.decoder.bias)
        if not self.config.tie_weights:
            nn.init.uniform_(self.decoder.weight, -r, r)

    def init_state(self, batch_size: int) -> State:
        """Zeros on the model's device and dtype."""
        weight = self.decoder.weight
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        if self.config.cell == "lstm":
            return (weight.new_zeros(shape), weight.new_zeros(shape))
        return weight.new_zeros(shape)

    def forward(self, ids: Tensor, state: State | None = None, lengths: Tensor | None = None) -> tuple[Tensor, State]:
        """Logits (B, T, V) for every position and the state after the last (real) token.

        ids: (B, T) token ids. lengths: (B,) true lengths when rows are right-padded;
        each row's returned state is then the one after its own last token, and logits
        at padded positions are meaningless.
        """
        output, state = self.encode(ids, state, lengths)
        if self.config.variational_dropout:
            output = locked_dropout(output, self.config.dropout, self.training)
        else:
            output = self.dropout(output)
        return self.decoder(output), state  # (B, T, V)

    def encode(self, ids: Tensor, state: State | None = None, lengths: Tensor | None = None) -> tuple[Tensor, State]:
        """The top layer's outputs (B, T, H) before the decoder, and the state."""
        batch_size, steps = ids.shape
        if state is None:
            state = self.init_state(batch_size)
        if self.training and lengths is None and self.regularised:
            return self.encode_regularised(ids, state)
        x = self.dropout(self.embedding(ids))  # (B, T, E)
        if lengths is None:
            output, state = self.rnn(x, state)  # (B, T, H)
            return output, state
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        packed_output, state = self.rnn(packed, state)
        output, _ = pad_packed_sequence(packed_output, batch_first=True, total_length=steps)
        return output, state

    @property
    def regularised(self) -> bool:
        """Whether training uses the AWD-LSTM path (layer by layer, explicit weights)."""
        config = self.config
        return config.variational_dropout or config.embedding_dropout > 0 or config.weight_drop > 0

    def encode_regularised(self, ids: Tensor, state: State) -> tuple[Tensor, State]:
        """`encode` in training with the AWD-LSTM regularisers: the same parameters and the
        same fused kernel, called one layer at a time so that masks go between the layers."""
        config = self.config
        locked = config.variational_dropout
        x = embedding_dropout(self.embedding, ids, config.embedding_dropout, self.training)  # (B, T, E)
        x = locked_dropout(x, config.dropout, True) if locked else self.dropout(x)
        states: list[State] = []
        for layer in range(config.num_layers):
            if layer > 0:  # between layers, as nn.LSTM's own dropout
                x = locked_dropout(x, config.dropout, True) if locked else self.dropout(x)
            params = layer_params(self.rnn, layer, config.weight_drop, self.training)
            x, layer_state = run_layer(self.rnn, params, x, select_state(state, slice(layer, layer + 1), dim=0))
            states.append(layer_state)
        return x, cat_states(states, dim=0)  # (B, T, H)

    def decode(self, output: Tensor) -> Tensor:
        """Logits from top-layer outputs (no dropout: used at inference)."""
        logits: Tensor = self.decoder(output)
        return logits


def detach_state(state: State) -> State:
    """Cut the graph at a window boundary: truncated BPTT (Williams & Peng 1990)."""
    if isinstance(state, tuple):
        return (state[0].detach(), state[1].detach())
    return state.detach()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_tensors(state: State) -> list[Tensor]:
    """A state as a list: [h] (RNN/GRU) or [h, c] (LSTM)."""
    return list(state) if isinstance(state, tuple) else [state]


def state_from_tensors(tensors: Sequence[Tensor]) -> State:
    """The inverse of `state_tensors`: an (h, c) pair from two tensors, else the one tensor."""
    return (tensors[0], tensors[1]) if len(tensors) == 2 else tensors[0]


def cat_states(states: list[State], dim: int = 1) -> State:
    """Join single- or multi-row states along the batch dimension (dim=0: join layers)."""
    first = states[0]
    if isinstance(first, tuple):
        pairs = [s for s in states if isinstance(s, tuple)]
        return (torch.cat([h for h, _ in pairs], dim=dim), torch.cat([c for _, c in pairs], dim=dim))
    return torch.cat([s for s in states if isinstance(s, Tensor)], dim=dim)


def select_state(state: State, rows: Tensor | list[int] | slice, dim: int = 1) -> State:
    """The rows `rows` of a batched state (batch is dim 1; dim=0 selects layers instead)."""
    if isinstance(state, tuple):
        return (_select(state[0], rows, dim), _select(state[1], rows, dim))
    return _select(state, rows, dim)


def _select(tensor: Tensor, rows: Tensor | list[int] | slice, dim: int) -> Tensor:
    return tensor[rows] if dim == 0 else tensor[:, rows]


def split_state(state: State) -> list[State]:
    """One single-row state per batch row."""
    batch_size = state_tensors(state)[0].shape[1]
    return [select_state(state, slice(i, i + 1)) for i in range(batch_size)]
