"""Token-level divergences against per-token loops written here in float64."""

import pytest
import torch

from hf_dwakd.objective.divergences import DIVERGENCES, divergence

from testing_utils import reference_divergence

NAMES = sorted(DIVERGENCES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_each_divergence_matches_a_per_token_loop(name, temperature):
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 3, 50, generator=generator)
    target = 3 * torch.randn(2, 3, 50, generator=generator)
    values = divergence(name, logits, target, temperature)
    assert values.shape == (2, 3) and values.dtype == torch.float32
    for index in [(b, t) for b in range(2) for t in range(3)]:
        expected = reference_divergence(name, logits[index].tolist(), target[index].tolist(), temperature)
        assert values[index].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", ["skewed_forward_kl", "skewed_reverse_kl"])
def test_skew_is_the_mixture_weight(name):
    logits, target = torch.randn(1, 50), torch.randn(1, 50)
    values = divergence(name, logits, target, 2.0, skew=0.3)
    expected = reference_divergence(name, logits[0].tolist(), target[0].tolist(), 2.0, skew=0.3)
    assert values.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_identical_distributions_give_zero(name):
    logits = torch.randn(4, 50)
    assert torch.allclose(divergence(name, logits, logits.clone(), 2.0), torch.zeros(4), atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_finite_values_and_gradients_where_probabilities_are_zero(name):
    logits = torch.randn(3, 50)
    target = torch.randn(3, 50)
    logits[0, :10] = -float("inf")  # exact zeros in the model distribution
    target[1, :10] = -float("inf")  # exact zeros in the target
    logits[2, 0], target[2, 1] = 1e4, 1e4  # probabilities that underflow to 0 in float32
    logits.requires_grad_(True)
    target.requires_grad_(True)
    values = divergence(name, logits, target, 2.0)
    assert torch.isfinite(values).all()
    values.sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(target.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_mask_zeroes_values_and_gradient(name):
    logits = torch.randn(2, 4, 50, requires_grad=True)
    target = torch.randn(2, 4, 50)
    mask = torch.tensor([[True, False, True, True], [False, False, True, False]])
    values = divergence(name, logits, target, 2.0, mask=mask)
    unmasked = divergence(name, logits, target, 2.0)
    assert torch.equal(values[~mask], torch.zeros(int((~mask).sum())))
    assert torch.equal(values[mask], unmasked[mask])
    values.sum().backward()
    assert torch.equal(logits.grad[~mask], torch.zeros_like(logits.grad[~mask]))
    assert logits.grad[mask].abs().sum() > 0


def test_bf16_logits_are_computed_in_float32():
    logits, target = torch.randn(3, 50), torch.randn(3, 50)
    values = divergence("forward_kl", logits.bfloat16(), target.bfloat16(), 2.0)
    assert values.dtype == torch.float32
    expected = divergence("forward_kl", logits.bfloat16().float(), target.bfloat16().float(), 2.0)
    assert torch.equal(values, expected)


def test_gradient_reaches_the_target_only_when_the_caller_keeps_it():
    logits = torch.randn(2, 50, requires_grad=True)
    target = torch.randn(2, 50, requires_grad=True)
    divergence("forward_kl", logits, target, 2.0).sum().backward()
    assert target.grad is not None and target.grad.abs().sum() > 0
    target.grad = None
    divergence("forward_kl", logits, target.detach(), 2.0).sum().backward()
    assert target.grad is None


def test_bad_names_and_shapes_are_refused():
    with pytest.raises(ValueError, match="divergence='kl'.*forward_kl"):
        divergence("kl", torch.zeros(2, 5), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="must match"):
        divergence("forward_kl", torch.zeros(2, 5), torch.zeros(2, 6))
