"""Token streams for truncated BPTT, as in pytorch/examples' word_language_model.

A stream is a 1-D array of ids: a tensor, or a numpy array such as the memmap of a
token file (training/token_cache.py). Over a numpy array, `batchify` and
`shard_streams` are views and each window is copied out as a long tensor when it is
used, so no tensor of the whole corpus is ever built; the memmap's pages a pass has
read are handed back to the page cache as it goes, so the resident memory of a pass
stays a few windows' worth, not the file's size.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from model.tokenizer import Tokenizer

Stream = TypeVar("Stream", Tensor, np.ndarray)
RELEASE_EVERY = 1024  # windows between hand-backs of a memmap's pages


def encode_stream(tokenizer: Tokenizer, text: str, direction: str = "forward") -> Tensor:
    """The whole text as one id stream (1-D long tensor); reversed for a backward model."""
    ids = tokenizer.encode(text).ids
    if direction == "backward":
        ids.reverse()
    return torch.tensor(ids, dtype=torch.long)


def batchify(stream: Stream, batch_size: int) -> Stream:
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
    length = len(stream) // batch_size
    if length < 2:
        raise ValueError(f"{len(stream)} tokens are too few for {batch_size} parallel streams")
    return stream[: length * batch_size].reshape(batch_size, length)  # (B, L), a view


def shard_streams(batched: Stream, rank: int, world_size: int) -> Stream:
    """Rank `rank`'s share of the B streams (DDP): a contiguous block of rows."""
    batch_size = batched.shape[0]
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {world_size} ranks")
    share = batch_size // world_size
    return batched[rank * share : (rank + 1) * share]


def num_windows(batched: Tensor | np.ndarray, bptt: int) -> int:
    """Windows per pass over (B, L): the last one may be shorter."""
    return (batched.shape[1] - 1 + bptt - 1) // bptt


def window(batched: Tensor | np.ndarray, index: int, bptt: int) -> tuple[Tensor, Tensor]:
    """Inputs and next-token targets of window `index`, each (B, T) with T <= bptt.

    streams  a b c d e f      bptt = 2:  window 0: inputs a b  targets b c
                                         window 1: inputs c d  targets d e
                                         window 2: inputs e    targets f
    """
    start = index * bptt
    steps = min(bptt, batched.shape[1] - 1 - start)
    if isinstance(batched, np.ndarray):  # one copy of the window's ids, inputs and targets together
        ids = torch.from_numpy(np.ascontiguousarray(batched[:, start : start + 1 + steps], dtype=np.int64))
        return ids[:, :-1], ids[:, 1:]
    return batched[:, start : start + steps], batched[:, start + 1 : start + 1 + steps]


def windows(
    batched: Tensor | np.ndarray, bptt: int, first: int = 0, device: torch.device | None = None
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(index, inputs, targets) for every window from `first` on, on `device` when given."""
    for index in range(first, num_windows(batched, bptt)):
        inputs, targets = window(batched, index, bptt)
        if device is not None and inputs.device != device:
            inputs, targets = inputs.to(device), targets.to(device)
        yield index, inputs, targets
        if (index + 1) % RELEASE_EVERY == 0:
            release_pages(batched)


def release_pages(batched: Tensor | np.ndarray) -> None:
    """Drop a memmap's pages from this process (they stay in the page cache; a later read maps them again)."""
    mapping = getattr(batched, "_mmap", None)  # np.memmap and every view of it keep their mmap here
    if isinstance(mapping, mmap.mmap):
        mapping.madvise(mmap.MADV_DONTNEED)
