"""Token streams for truncated BPTT, as in pytorch/examples' word_language_model."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from model.tokenizer import Tokenizer


def encode_stream(tokenizer: Tokenizer, text: str, direction: str = "forward") -> Tensor:
    """The whole text as one id stream (1-D long tensor); reversed for a backward model."""
    ids = tokenizer.encode(text).ids
    if direction == "backward":
        ids.reverse()
    return torch.tensor(ids, dtype=torch.long)


def batchify(stream: Tensor, batch_size: int) -> Tensor:
    """Cut a 1-D stream into `batch_size` parallel streams, one per row: (B, L).

    Stream i starts at offset i * L, L = len // B; the tail that does not fill a whole
    column is dropped. With the alphabet as the stream and B = 4:

        a b c d e f g h i j k l m n o p q r s t u v w x y z
        ┌ a b c d e f ┐   <- stream 0 starts at 0
        │ g h i j k l │   <- stream 1 starts at 6
        │ m n o p q r │   <- stream 2 starts at 12
        └ s t u v w x ┘   <- stream 3 starts at 18   (y z dropped)

    Rows are independent: the model never sees `f` followed by `g` as one sequence,
    which is fine because each row's hidden state is carried from window to window.
    """
    length = stream.numel() // batch_size
    if length < 2:
        raise ValueError(f"{stream.numel()} tokens are too few for {batch_size} parallel streams")
    return stream[: length * batch_size].view(batch_size, length)  # (B, L)


def shard_streams(batched: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank `rank`'s share of the B streams (DDP): a contiguous block of rows."""
    batch_size = batched.shape[0]
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {world_size} ranks")
    share = batch_size // world_size
    return batched[rank * share : (rank + 1) * share]


def num_windows(batched: Tensor, bptt: int) -> int:
    """Windows per pass over (B, L): the last one may be shorter."""
    return (batched.shape[1] - 1 + bptt - 1) // bptt


def window(batched: Tensor, index: int, bptt: int) -> tuple[Tensor, Tensor]:
    """Inputs and next-token targets of window `index`, each (B, T) with T <= bptt.

    streams  a b c d e f      bptt = 2:  window 0: inputs a b  targets b c
                                         window 1: inputs c d  targets d e
                                         window 2: inputs e    targets f
    """
    start = index * bptt
    steps = min(bptt, batched.shape[1] - 1 - start)
    return batched[:, start : start + steps], batched[:, start + 1 : start + 1 + steps]


def windows(batched: Tensor, bptt: int, first: int = 0) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(index, inputs, targets) for every window from `first` on."""
    for index in range(first, num_windows(batched, bptt)):
        inputs, targets = window(batched, index, bptt)
        yield index, inputs, targets
