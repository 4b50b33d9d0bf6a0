"""Per-token, vocabulary-wide terms of the student and teacher spaces (METHOD.md §3 and the student CE of §5).

Each function returns (N,) float32 values over one side's N response tokens, computed `chunk_size` tokens at a
time. The logits are indexed inside the chunk, so only a chunk of them is ever upcast to float32.
"""

import torch
import torch.nn.functional as F

from hf_dwakd.objective.attention import projector_cross_entropy, s2t_logits, t2s_logits
from hf_dwakd.objective.chunking import over_token_chunks
from hf_dwakd.objective.divergences import divergence
from hf_dwakd.objective.options import DWAKDLossOptions
from hf_dwakd.objective.outputs import SideOutputs
from hf_dwakd.objective.responses import Responses
from hf_dwakd.objective.weights import entropy, max_probability


def student_cross_entropy(student: SideOutputs, responses: Responses, chunk_size: int | None) -> torch.Tensor:
    """CE of the student logits against its labels, per response token."""

    def chunk(batch_index, position_index, labels, logits):
        return {"ce": F.cross_entropy(logits[batch_index, position_index].float(), labels, reduction="none")}

    per_token = (responses.batch_index, responses.position_index, responses.token_labels())
    return over_token_chunks(chunk, per_token, (student.logits,), chunk_size)["ce"]


def student_space(
    student: SideOutputs, responses: Responses, t2s_hidden: torch.Tensor, options: DWAKDLossOptions
) -> dict[str, torch.Tensor]:
    """Per student response token, from the student logits and `t2s_hidden` (N, d_s) rows of h_t2s:

    `kd`: divergence of p_s from the detached p_t2s at the temperature (gradient into the student logits);
    `projector_ce`: the warm-up CE of z_t2s (gradient into h_t2s); `correct`: argmax z_t2s == label; with entropy
    weighting, `entropy` (H_s) and, with the gate, `gate` (max p_t2s), both at tau = 1 and detached.
    """
    vocab_size = student.vocab_size

    def chunk(batch_index, position_index, labels, hidden, logits, lm_head_weight):
        student_logits = logits[batch_index, position_index]
        projected_logits = t2s_logits(hidden, lm_head_weight)
        terms = {
            "kd": divergence(
                options.divergence, student_logits, projected_logits.detach(), options.temperature, skew=options.skew
            ),
            "projector_ce": projector_cross_entropy(projected_logits, labels),
            "correct": projected_logits.detach().argmax(dim=-1) == labels,
        }
        if options.entropy_weighting:
            terms["entropy"] = entropy(student_logits, vocab_size)
            if options.teacher_gate:
                terms["gate"] = max_probability(projected_logits, vocab_size)
        return terms

    per_token = (responses.batch_index, responses.position_index, responses.token_labels(), t2s_hidden)
    return over_token_chunks(chunk, per_token, (student.logits, student.lm_head_weight), options.chunk_size)


def teacher_space(
    teacher: SideOutputs, responses: Responses, s2t_hidden: torch.Tensor, options: DWAKDLossOptions
) -> dict[str, torch.Tensor]:
    """Per teacher response token, from the teacher logits and `s2t_hidden` (N_t, d_t) rows of h_s2t:

    `kd`: divergence of p_s2t from the detached p_t at the temperature (gradient into h_s2t); `correct`:
    argmax z_s2t == teacher label; with entropy weighting, `entropy` (H_t at tau = 1, detached).
    """
    vocab_size = teacher.vocab_size

    def chunk(batch_index, position_index, labels, hidden, logits, lm_head_weight):
        teacher_logits = logits[batch_index, position_index].detach()
        projected_logits = s2t_logits(hidden, lm_head_weight)
        terms = {
            "kd": divergence(
                options.divergence, projected_logits, teacher_logits, options.temperature, skew=options.skew
            ),
            "correct": projected_logits.detach().argmax(dim=-1) == labels,
        }
        if options.entropy_weighting:
            terms["entropy"] = entropy(teacher_logits, vocab_size)
        return terms

    per_token = (responses.batch_index, responses.position_index, responses.token_labels(), s2t_hidden)
    return over_token_chunks(chunk, per_token, (teacher.logits, teacher.lm_head_weight), options.chunk_size)
