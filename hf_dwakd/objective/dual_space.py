"""Per-token, vocabulary-wide terms of the student and teacher spaces (docs/method.md, Dual-space KD and Loss).

Each function returns (N,) float32 values over one side's N response tokens, computed `chunk_size` tokens at a
time. Each chunk reads its logit rows through `SideOutputs.logits_at` (the model's output layer applied to
those rows only), so only a chunk of them ever exists in float32, and under chunking only a chunk is kept for the
backward (`chunking.py`). Each logit set gets one log-softmax per temperature: the tau = 1 one serves its
cross-entropy, entropy or gate (and the KD when tau = 1), since every (tokens x vocabulary) pass and allocation
costs about as much as the arithmetic.
"""

import torch
import torch.nn.functional as F

from hf_dwakd.objective.attention import s2t_logits, t2s_logits
from hf_dwakd.objective.chunking import over_token_chunks
from hf_dwakd.objective.divergences import divergence
from hf_dwakd.objective.options import DWAKDLossOptions
from hf_dwakd.objective.outputs import SideOutputs
from hf_dwakd.objective.responses import Responses
from hf_dwakd.objective.weights import entropy, max_probability, vocabulary_log_probs


def predicts(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """argmax(logits) == labels, with `max`'s indices: the same first maximum, found in one faster pass on CPU."""
    return logits.detach().max(dim=-1).indices == labels


def student_cross_entropy(student: SideOutputs, responses: Responses, chunk_size: int | None) -> torch.Tensor:
    """CE of the student logits against its labels, per response token."""

    def chunk(batch_index, position_index, labels):
        student_logits = student.logits_at(batch_index, position_index)
        return {"ce": F.cross_entropy(student_logits.float(), labels, reduction="none")}

    per_token = (responses.batch_index, responses.position_index, responses.token_labels())
    return over_token_chunks(chunk, per_token, (), chunk_size)["ce"]


def student_space(
    student: SideOutputs,
    responses: Responses,
    t2s_hidden: torch.Tensor,
    options: DWAKDLossOptions,
    with_cross_entropy: bool = False,
) -> dict[str, torch.Tensor]:
    """Per student response token, from the student logits and `t2s_hidden` (N, d_s) rows of h_t2s:

    `kd`: divergence (`options.kd_divergence`) of p_s from the detached p_t2s at the temperature (gradient into
    the student logits); `projector_ce`: the warm-up CE of z_t2s (gradient into h_t2s); `correct`: argmax z_t2s ==
    label; with entropy weighting, `entropy` (H_s) and, with the gate, `gate` (max p_t2s), both at tau = 1 and
    detached. With `with_cross_entropy`, also `ce`, the student CE (as `student_cross_entropy`), from the same
    gathered logits, so that the backward fills one gradient of the logits instead of two.
    """
    vocab_size = student.vocab_size
    unpadded = student.logit_width == vocab_size

    def chunk(batch_index, position_index, labels, hidden, lm_head_weight):
        student_logits = student.logits_at(batch_index, position_index)
        projected_logits = t2s_logits(hidden, lm_head_weight)
        projected_log_probs = torch.log_softmax(projected_logits.float(), dim=-1)
        student_log_probs = None  # tau = 1, every column; computed only where something uses it
        if with_cross_entropy or (options.use_entropy_weighting and unpadded):
            student_log_probs = torch.log_softmax(student_logits.float(), dim=-1)
        terms = {
            "kd": divergence(
                options.kd_divergence,
                student_logits,
                projected_logits.detach(),
                options.kd_temperature,
                skew=options.kd_skew,
                unscaled=student_log_probs,
                target_unscaled=projected_log_probs.detach(),
            ),
            "projector_ce": F.nll_loss(projected_log_probs, labels, reduction="none"),  # CE(z_t2s, labels)
            "correct": predicts(projected_logits, labels),
        }
        if with_cross_entropy:
            terms["ce"] = F.nll_loss(student_log_probs, labels, reduction="none")
        if options.use_entropy_weighting:
            terms["entropy"] = entropy(vocabulary_log_probs(student_logits, student_log_probs, vocab_size))
            if options.use_teacher_gate:
                terms["gate"] = max_probability(
                    vocabulary_log_probs(projected_logits, projected_log_probs, vocab_size)
                )
        return terms

    per_token = (responses.batch_index, responses.position_index, responses.token_labels(), t2s_hidden)
    return over_token_chunks(chunk, per_token, (student.lm_head_weight,), options.kd_chunk_size)


def teacher_space(
    teacher: SideOutputs, responses: Responses, s2t_hidden: torch.Tensor, options: DWAKDLossOptions
) -> dict[str, torch.Tensor]:
    """Per teacher response token, from the teacher logits and `s2t_hidden` (N_t, d_t) rows of h_s2t:

    `kd`: divergence (`options.teacher_divergence`) of p_s2t from the detached p_t at the temperature (gradient
    into h_s2t); `correct`: argmax z_s2t == teacher label; with entropy weighting, `entropy` (H_t at tau = 1,
    detached).
    """
    vocab_size = teacher.vocab_size
    unpadded = teacher.logit_width == vocab_size

    def chunk(batch_index, position_index, labels, hidden, lm_head_weight):
        teacher_logits = teacher.logits_at(batch_index, position_index).detach()
        projected_logits = s2t_logits(hidden, lm_head_weight)
        teacher_log_probs = None  # tau = 1, every column; computed only where something uses it
        if options.use_entropy_weighting and unpadded:
            teacher_log_probs = torch.log_softmax(teacher_logits.float(), dim=-1)
        terms = {
            "kd": divergence(
                options.teacher_divergence,
                projected_logits,
                teacher_logits,
                options.kd_temperature,
                skew=options.kd_skew,
                target_unscaled=teacher_log_probs,
            ),
            "correct": predicts(projected_logits, labels),
        }
        if options.use_entropy_weighting:
            terms["entropy"] = entropy(vocabulary_log_probs(teacher_logits, teacher_log_probs, vocab_size))
        return terms

    per_token = (responses.batch_index, responses.position_index, responses.token_labels(), s2t_hidden)
    return over_token_chunks(chunk, per_token, (teacher.lm_head_weight,), options.kd_chunk_size)
