import math

import pytest
import torch

from model.inference import advance, feed_tokens, fresh_sequences, generate_ids, prime
from model.network import cat_states, split_state
from model.sampling import SamplerInputs, SamplingParams, sample, sampling_probs
from tests.factories import char_tokenizer, tiny_model


def reference_logprobs(model: torch.nn.Module, boundary: int, ids: list[int]) -> torch.Tensor:
    """Plain one-forward computation: log p(ids[t] | boundary, ids[:t])."""
    inputs = torch.tensor([[boundary, *ids[:-1]]])
    with torch.no_grad():
        logits, _ = model(inputs)
    return torch.log_softmax(logits[0], -1).gather(-1, torch.tensor(ids).unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_feeding_in_pieces_equals_one_piece(cell: str) -> None:
    tokenizer = char_tokenizer()
    model = tiny_model(tokenizer, cell=cell)
    ids = tokenizer.encode("the lazy dog jumps 다람쥐").ids
    expected = reference_logprobs(model, tokenizer.boundary_id, ids)
    state, pending = fresh_sequences(model, tokenizer.boundary_id, 1)
    got = []
    for piece in (ids[:1], ids[1:9], [], ids[9:]):
        logprobs, state, pending = feed_tokens(model, state, pending, [piece])
        got.append(logprobs[0])
    torch.testing.assert_close(torch.cat(got), expected, rtol=1e-5, atol=1e-5)


def test_batched_feed_with_different_lengths_and_long_texts() -> None:
    tokenizer = char_tokenizer()
    model = tiny_model(tokenizer)
    texts = [tokenizer.encode(t).ids for t in ["hello", "the quick brown fox " * 20, "", "a"]]
    state, pending = fresh_sequences(model, tokenizer.boundary_id, len(texts))
    logprobs, state, pending = feed_tokens(model, state, pending, texts)
    for row, ids in enumerate(texts):
        assert logprobs[row].shape == (len(ids),)
        if ids:
            torch.testing.assert_close(logprobs[row], reference_logprobs(model, tokenizer.boundary_id, ids))
    assert pending[2] == tokenizer.boundary_id
    # states of rows agree with each row fed alone
    rows = split_state(state)
    alone_state, _ = prime(model, tokenizer.boundary_id, [texts[1]])
    torch.testing.assert_close(rows[1][0], alone_state[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cat_states(rows)[0], state[0])


def test_advance_matches_feed() -> None:
    tokenizer = char_tokenizer()
    model = tiny_model(tokenizer)
    ids = tokenizer.encode("hello").ids
    state, pending = prime(model, tokenizer.boundary_id, [ids])
    logits, _ = advance(model, torch.tensor(pending), state)
    probe = tokenizer.encode("w").ids
    logprobs, _, _ = feed_tokens(model, state, pending, [probe])
    assert math.isclose(float(torch.log_softmax(logits[0], -1)[probe[0]]), float(logprobs[0][0]), rel_tol=1e-5)


def sampling_distribution(logits: torch.Tensor, params: SamplingParams, history: list[int]) -> torch.Tensor:
    """One row's distribution after every setting, the history marking the seen tokens."""
    seen = torch.zeros(1, logits.numel(), dtype=torch.bool)
    seen[0, history] = True
    inputs = SamplerInputs([params], [0], [0], seen=seen)
    return sampling_probs(logits.unsqueeze(0), inputs)[0]


def test_greedy_top_k_top_p_and_penalty() -> None:
    logits = torch.tensor([1.0, 3.0, 2.0, 0.5])
    greedy = sampling_distribution(logits, SamplingParams(temperature=0), [])
    assert greedy.tolist() == [0, 1, 0, 0]
    top2 = sampling_distribution(logits, SamplingParams(top_k=2), [])
    assert (top2 > 0).tolist() == [False, True, True, False]
    assert math.isclose(float(top2.sum()), 1.0)
    nucleus = sampling_distribution(logits, SamplingParams(top_p=0.5), [])
    assert (nucleus > 0).tolist() == [False, True, False, False]
    penalised = sampling_distribution(logits, SamplingParams(temperature=0, repetition_penalty=10.0), [1])
    assert int(penalised.argmax()) == 2


def test_seed_reproduces_whatever_shares_the_batch() -> None:
    torch.manual_seed(1)
    logits = torch.randn(5, 50)
    params = [SamplingParams(temperature=1.0, top_k=20)] * 5
    steps = [0] * 5
    alone = sample(logits[2:3], SamplerInputs(params[:1], [42], steps[:1]))
    batch = sample(logits, SamplerInputs(params, [7, 8, 42, 9, 10], steps))
    assert alone[0] == batch[2]


def test_generate_is_reproducible_with_a_seed() -> None:
    tokenizer = char_tokenizer()
    model = tiny_model(tokenizer)
    prompt = tokenizer.encode("the ").ids
    params = SamplingParams(temperature=0.9, top_p=0.95)
    a = generate_ids(model, tokenizer.boundary_id, prompt, 30, params, seed=3)
    b = generate_ids(model, tokenizer.boundary_id, prompt, 30, params, seed=3)
    assert a == b and len(a) == 30


def test_bad_sampling_params() -> None:
    for kwargs in ({"temperature": -1}, {"temperature": float("nan")}, {"top_p": 0}, {"top_k": -2}):
        with pytest.raises(ValueError):
            SamplingParams(**kwargs)  # type: ignore[arg-type]
