"""Token weights of the dual-space KD (docs/method.md, Token weights): student entropy x teacher gate, teacher
confidence.

All from tau = 1 distributions over the first `vocab_size` columns (padded LM heads have more), detached, and
normalised per sequence so the weights of a sequence sum to its number of response tokens.
"""

import math

import torch

from hf_dwakd.objective.divergences import floored


@torch.no_grad()
def vocabulary_log_probs(logits: torch.Tensor, all_columns: torch.Tensor | None, vocab_size: int) -> torch.Tensor:
    """tau = 1 log-probabilities (float32) over the first `vocab_size` columns of `logits`.

    `all_columns` is the caller's `log_softmax` over every column, reused when there is no padded column.
    """
    if all_columns is not None and logits.shape[-1] == vocab_size:
        return all_columns.detach()
    return torch.log_softmax(logits[..., :vocab_size].float(), dim=-1)


@torch.no_grad()
def entropy(log_p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each distribution given by its log-probabilities (..., V); finite where p is 0."""
    log_p = floored(log_p)
    return -log_p.exp().mul_(log_p).sum(dim=-1)  # p log p, multiplied in place into the fresh exp(log p)


@torch.no_grad()
def max_probability(log_p: torch.Tensor) -> torch.Tensor:
    """max_v p(v) as exp(max_v log p(v)): from log-probabilities, without a softmax over the vocabulary."""
    return log_p.amax(dim=-1).exp()


@torch.no_grad()
def normalise_per_sequence(raw: torch.Tensor, sequence_index: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """Scale each sequence's weights to sum to its token count. `raw`, `sequence_index`: (N,) per token.

    A sequence whose raw weights are all 0 (nothing to rank its tokens by) gets weight 1 on every token.
    """
    sums = raw.new_zeros(num_sequences).index_add_(0, sequence_index, raw)
    counts = raw.new_zeros(num_sequences).index_add_(0, sequence_index, torch.ones_like(raw))
    token_sums, token_counts = sums[sequence_index], counts[sequence_index]
    return torch.where(token_sums > 0, raw * token_counts / token_sums.clamp(min=torch.finfo(raw.dtype).tiny), 1.0)


@torch.no_grad()
def student_raw_weights(student_entropy: torch.Tensor, gate: torch.Tensor, teacher_gate: bool) -> torch.Tensor:
    """w_s(i) = H_s(i) * g(i), or H_s(i) with the gate off."""
    return student_entropy * gate if teacher_gate else student_entropy


STUDENT_WEIGHT_NORMALIZATIONS = ("product", "entropy")


@torch.no_grad()
def student_weights(
    student_entropy: torch.Tensor,
    gate: torch.Tensor | None,
    normalization: str,
    sequence_index: torch.Tensor,
    num_sequences: int,
) -> torch.Tensor:
    """The student-space KD weight of each response token (N,).

    `"product"` normalises H_s * g per sequence, so a sequence's weights sum to its token count whatever the gate
    is. `"entropy"` (the released DWA-KD code) normalises H_s alone and multiplies by the raw gate, so the term is
    scaled down while the projection is still unsure (low gate) and grows as the projectors learn. Without a gate
    (`gate` None) the two are the same.
    """
    if normalization == "product" or gate is None:
        raw = student_entropy if gate is None else student_entropy * gate
        return normalise_per_sequence(raw, sequence_index, num_sequences)
    return normalise_per_sequence(student_entropy, sequence_index, num_sequences) * gate


@torch.no_grad()
def teacher_raw_weights(teacher_entropy: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """w_t(j) = 1 - H_t(j) / log V_t, clamped to [0, 1]."""
    return (1 - teacher_entropy / math.log(vocab_size)).clamp(0, 1)
