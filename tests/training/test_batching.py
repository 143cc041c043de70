import pytest
import torch

from model.tokenizer import CharTokenizer
from training.batching import batchify, encode_stream, num_windows, shard_streams, window, windows


def test_batchify_starts_stream_i_at_offset_i_times_length_over_b() -> None:
    stream = torch.arange(26)
    batched = batchify(stream, 4)
    assert batched.shape == (4, 6)
    for i in range(4):
        assert batched[i, 0].item() == i * (24 // 4)  # i * len / B, len trimmed to a multiple of B
        assert batched[i].tolist() == list(range(i * 6, i * 6 + 6))  # contiguous text per row
    assert 24 not in batched and 25 not in batched  # the ragged tail is dropped


def test_batchify_rejects_too_little_data() -> None:
    with pytest.raises(ValueError, match="too few"):
        batchify(torch.arange(5), 4)


def test_windows_cover_every_next_token_pair_exactly_once() -> None:
    batched = batchify(torch.arange(40), 2)  # rows 0..19 and 20..39
    pairs = set()
    seen_windows = 0
    for index, inputs, targets in windows(batched, bptt=6):
        assert inputs.shape == targets.shape and inputs.shape[1] <= 6
        assert torch.equal(targets, inputs + 1)  # targets are the next tokens of the same row
        pairs |= {(int(a), int(b)) for a, b in zip(inputs.flatten(), targets.flatten(), strict=True)}
        seen_windows = index + 1
    assert seen_windows == num_windows(batched, 6) == 4  # 19 pairs per row: 6 + 6 + 6 + 1
    assert pairs == {(t, t + 1) for t in range(40) if t not in (19, 39)}
    inputs, targets = window(batched, 3, 6)
    assert inputs.tolist() == [[18], [38]] and targets.tolist() == [[19], [39]]


def test_windows_resume_from_a_given_window() -> None:
    batched = batchify(torch.arange(40), 2)
    assert [i for i, _, _ in windows(batched, 6, first=2)] == [2, 3]


def test_shards_split_the_streams_between_ranks() -> None:
    batched = batchify(torch.arange(48), 4)
    shards = [shard_streams(batched, rank, 2) for rank in range(2)]
    assert torch.equal(torch.cat(shards), batched)
    with pytest.raises(ValueError, match="divisible"):
        shard_streams(batched, 0, 3)


def test_backward_direction_reverses_the_stream() -> None:
    tokenizer = CharTokenizer.build("abc\n")
    forward = encode_stream(tokenizer, "abc\nab", "forward")
    backward = encode_stream(tokenizer, "abc\nab", "backward")
    assert backward.tolist() == forward.tolist()[::-1]
    assert tokenizer.decode(backward.tolist()) == "ba\ncba"
