"""The batched sampler: exact filters without a sort, the right distribution, one random stream per row."""

from __future__ import annotations

import pytest
import torch

from model.sampling import (
    SamplerInputs,
    SamplingParams,
    inverse_cdf,
    nucleus,
    process_logits,
    sample,
    sampling_probs,
    uniforms,
)


def inputs(params: list[SamplingParams], seeds: list[int] | None = None, **extra: torch.Tensor) -> SamplerInputs:
    count = len(params)
    return SamplerInputs(params, seeds if seeds is not None else list(range(count)), [0] * count, **extra)


def test_the_nucleus_is_the_sorted_definition_without_sorting() -> None:
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(64, 500, generator=generator) * 2.5, dim=-1)
    top_p = torch.rand(64, generator=generator, dtype=torch.float64) * 0.95 + 0.02
    kept = nucleus(probs, top_p)
    ordered, order = torch.sort(probs, descending=True, dim=-1)
    mass_before = ordered.double().cumsum(-1) - ordered.double()
    expected = torch.zeros_like(kept).scatter(1, order, mass_before < top_p.unsqueeze(1))
    assert torch.equal(kept, expected)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, top_p=0.6),
        SamplingParams(temperature=0.7, top_k=4),
        SamplingParams(temperature=1.2, min_p=0.2),
        SamplingParams(temperature=1.0, top_k=6, top_p=0.8),
        SamplingParams(temperature=1.0),
    ],
)
def test_draws_follow_the_filtered_distribution(params: SamplingParams) -> None:
    """Rejection (and its exact fallback) gives the filtered distribution; 20k seeded draws, fixed outcome."""
    logits = torch.randn(1, 12, generator=torch.Generator().manual_seed(3)) * 2
    draws = 20_000
    ids = sample(logits.expand(draws, 12), inputs([params] * draws))
    observed = torch.bincount(ids, minlength=12).double() / draws
    expected = sampling_probs(logits, inputs([params]))[0].double()
    assert (observed[expected == 0] == 0).all(), "a filtered-out token was drawn"
    assert (observed - expected).abs().max() < 0.012


def test_a_rows_draws_depend_on_its_seed_and_step_only() -> None:
    logits = torch.randn(6, 40, generator=torch.Generator().manual_seed(1))
    logits[5] = logits[0]
    mixed = [
        SamplingParams(temperature=0.9, top_p=0.9),
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.0, top_k=3, top_p=0.5),
        SamplingParams(temperature=0.5, repetition_penalty=1.5),
        SamplingParams(temperature=1.1, min_p=0.05),
        SamplingParams(temperature=0.9, top_p=0.9),
    ]
    together = sample(logits, inputs(mixed, seeds=[7, 1, 2, 3, 4, 7]))
    for row in range(6):
        alone = sample(logits[row : row + 1], inputs(mixed[row : row + 1], seeds=[[7, 1, 2, 3, 4, 7][row]]))
        assert int(alone[0]) == int(together[row])
    assert int(together[0]) == int(together[5])  # same logits, settings and seed: same token


def test_uniforms_are_a_deterministic_stream_in_the_unit_interval() -> None:
    seeds = [0, 1, 2**63 - 1] * 1000
    steps = list(range(3000))
    u = uniforms(seeds, steps)
    assert torch.equal(u, uniforms(seeds, steps))
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.02 and len(set(u.tolist())) == 3000
    assert not torch.equal(uniforms(seeds, steps, attempt=1), u)


def test_penalties_bias_and_bans_change_the_logits_as_documented() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    seen = torch.tensor([[True, True, False, False]])
    counts = torch.tensor([[0.0, 3.0, 1.0, 0.0]])
    banned = [(0, 3)]  # (row, token)
    params = SamplingParams(
        repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25, logit_bias=((2, 1.5),)
    )
    out = process_logits(logits, inputs([params], seen=seen, counts=counts, banned=banned))
    # token 0: seen, positive -> 2/2; token 1: seen, negative -> -1*2, then - 0.5 - 3*0.25;
    # token 2: +1.5 bias, then - 0.5 - 0.25; token 3: banned.
    assert out[0, :3].tolist() == pytest.approx([1.0, -2.0 - 0.5 - 0.75, 2.0 - 0.75])
    assert out[0, 3] == float("-inf")
    assert torch.equal(logits, torch.tensor([[2.0, -1.0, 0.5, 0.0]]))  # the input is left as it was


def test_a_large_logit_bias_forces_its_token_and_greedy_is_argmax() -> None:
    logits = torch.randn(3, 30, generator=torch.Generator().manual_seed(2))
    forced = sample(logits, inputs([SamplingParams(logit_bias=((17, 100.0),))] * 3))
    assert forced.tolist() == [17, 17, 17]
    greedy = sample(logits, inputs([SamplingParams(temperature=0)] * 3))
    assert greedy.tolist() == logits.argmax(-1).tolist()


@pytest.mark.parametrize("vocab", [7, 128, 300, 10_000])
def test_the_two_level_inverse_cdf_picks_what_one_running_sum_picks(vocab: int) -> None:
    generator = torch.Generator().manual_seed(vocab)
    probs = torch.softmax(torch.randn(40, vocab, generator=generator) * 3, dim=-1)
    probs[:, ::3] = 0.0  # filtered-out tokens are never landed on
    u = torch.rand(40, generator=generator, dtype=torch.float64)
    index, total = inverse_cdf(probs, u)
    cumulative = probs.double().cumsum(dim=1)
    expected = torch.searchsorted(cumulative, (u * cumulative[:, -1]).unsqueeze(1), right=True).squeeze(1)
    assert torch.equal(index, expected) and bool((probs.gather(1, index.unsqueeze(1)) > 0).all())
    assert torch.allclose(total, cumulative[:, -1])
