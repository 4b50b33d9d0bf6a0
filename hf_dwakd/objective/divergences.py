"""Token-level divergences between a model's distribution q and a target distribution p (docs/method.md,
Dual-space KD).

Every divergence takes logits (..., V), divides both by the temperature, works in float32 and returns one value
per token (...). Log-probabilities are floored at `LOG_FLOOR` (far below float32's smallest probability) to keep
terms finite when a logit is -inf; probabilities that underflow to 0 contribute 0. The clamp is applied only when
some log-probability lies below the floor (logits over temperature some 10^4 apart, or -inf), so the usual case
skips its (tokens x V) pass.
"""

import math
from collections.abc import Callable

import torch

LOG_FLOOR = -1e4
ADAPTIVE_KL_HEAD_MASS = 0.5  # AKL (Wu et al. 2024): the head is the teacher's top tokens holding this mass


def floored(log_p: torch.Tensor) -> torch.Tensor:
    """`log_p` clamped at `LOG_FLOOR`; returned as it is when nothing lies below (a cheap read-only check)."""
    if log_p.numel() and log_p.amin() < LOG_FLOOR:
        return log_p.clamp(min=LOG_FLOOR)
    return log_p


def log_probs(logits: torch.Tensor, temperature: float, unscaled: torch.Tensor | None = None) -> torch.Tensor:
    """Floored log-softmax of `logits / temperature` in float32.

    `unscaled`: the caller's `log_softmax(logits)` (temperature 1), reused when the temperature is 1.
    """
    if temperature == 1 and unscaled is not None:
        return floored(unscaled)
    logits = logits.float()
    if temperature != 1:
        logits = logits / temperature
    return floored(torch.log_softmax(logits, dim=-1))


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p (log p - log q) from log-probabilities."""
    # The same values as written: negated per token, not per entry, so the gradient into log q needs no negation
    # pass; multiplied in place into the fresh difference, so no further (tokens x V) tensor is allocated.
    return -(log_q - log_p).mul_(log_p.exp()).sum(dim=-1)


def _log_mixture(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(weight_a * a + (1 - weight_a) * b), finite even where both probabilities underflow."""
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log(1 - weight_a))


def forward_kl(log_q, log_p, skew):
    return _kl(log_p, log_q)


def reverse_kl(log_q, log_p, skew):
    return _kl(log_q, log_p)


def skewed_forward_kl(log_q, log_p, skew):
    """KL(p || skew p + (1 - skew) q) (DistiLLM)."""
    return _kl(log_p, _log_mixture(log_p, log_q, skew))


def skewed_reverse_kl(log_q, log_p, skew):
    """KL(q || skew q + (1 - skew) p) (DistiLLM)."""
    return _kl(log_q, _log_mixture(log_q, log_p, skew))


def js(log_q, log_p, skew):
    """Jensen-Shannon: the mean of KL(p || m) and KL(q || m), m = (p + q) / 2."""
    log_m = _log_mixture(log_p, log_q, 0.5)
    return 0.5 * (_kl(log_p, log_m) + _kl(log_q, log_m))


def adaptive_kl(log_q, log_p, skew):
    """AKL (Wu et al. 2024): forward and reverse KL weighted by the |p - q| gap on the head and on the tail of p.

    The head holds the teacher's most probable tokens up to `ADAPTIVE_KL_HEAD_MASS` of its mass (the token that
    crosses it included); the tail is the rest. The two gap weights are detached.
    """
    with torch.no_grad():
        p_sorted, order = log_p.exp().sort(dim=-1, descending=True)
        gap = (p_sorted - log_q.exp().gather(-1, order)).abs()
        mass_before = p_sorted.cumsum(dim=-1) - p_sorted
        head = mass_before < ADAPTIVE_KL_HEAD_MASS
        gap_head = (gap * head).sum(dim=-1)
        gap_tail = (gap * ~head).sum(dim=-1)
        total = (gap_head + gap_tail).clamp(min=torch.finfo(gap.dtype).tiny)
    return gap_head / total * _kl(log_p, log_q) + gap_tail / total * _kl(log_q, log_p)


DIVERGENCES: dict[str, Callable] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "skewed_forward_kl": skewed_forward_kl,
    "skewed_reverse_kl": skewed_reverse_kl,
    "js": js,
    "adaptive_kl": adaptive_kl,
}


def check_divergence(name: str, field: str = "divergence") -> None:
    if name not in DIVERGENCES:
        raise ValueError(f"{field}={name!r} is unknown; use one of {sorted(DIVERGENCES)}.")


def divergence(
    name: str,
    logits: torch.Tensor,
    target_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    skew: float = 0.1,
    *,
    unscaled: torch.Tensor | None = None,
    target_unscaled: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token divergence of the model distribution (`logits`) from the target (`target_logits`), float32.

    Whether the target carries gradient is the caller's choice (detach it for a fixed target). Where `mask` is
    False the value is 0 and no gradient flows. `skew` is the mixture weight of the skewed divergences.
    `unscaled`, `target_unscaled`: each logit set's temperature-1 log-softmax if the caller has it (see `log_probs`).
    """
    check_divergence(name)
    if logits.shape != target_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target_logits {tuple(target_logits.shape)} must match.")
    values = DIVERGENCES[name](
        log_probs(logits, temperature, unscaled), log_probs(target_logits, temperature, target_unscaled), skew
    )
    if mask is not None:
        values = torch.where(mask, values, 0.0)
    return values
