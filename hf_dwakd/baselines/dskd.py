"""DSKD with cross-model attention (Zhang et al. 2024, arXiv 2406.17328), docs/method.md, Baselines.

The DWA-KD backbone (`hf_dwakd.objective`: cross-model attention with per-example normalisation, both spaces'
divergences, the projector warm-up CE) without entropy weights and without Soft-DTW; the student-space KD counts
only the positions where the projected teacher predicts the label, as DSKD does.
"""

from dataclasses import replace

import torch

from hf_dwakd.objective.attention import cross_model_attention
from hf_dwakd.objective.checks import check_inputs, check_responses, loss_denominator
from hf_dwakd.objective.dual_space import student_space, teacher_space
from hf_dwakd.objective.options import DWAKDLossOptions
from hf_dwakd.objective.outputs import SideOutputs
from hf_dwakd.objective.responses import gather_responses
from hf_dwakd.projectors import DWAKDProjectors


def dskd_loss(
    student: SideOutputs,
    teacher: SideOutputs,
    num_items_in_batch: int | torch.Tensor | None = None,
    *,
    projectors: DWAKDProjectors,
    temperature: float = 2.0,
    divergence: str = "forward_kl",
    skew: float = 0.1,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DSKD KD term: L_ce_t2s + sum_i 1{argmax z_t2s(i) = y_i} D(p_t2s || p_s)(i) + sum_j KL(p_t || p_s2t)(j),
    divided by `num_items_in_batch` (student response tokens of the whole batch; None: this batch's count).

    The caller forms `(1 - kd_rate) * CE + kd_rate * kd`. `divergence` (a name of the objective's registry,
    DSKD's kd_objective) applies to the student space; the teacher space uses forward KL, as DSKD's code does.
    Both spaces divide logits by `temperature`. `chunk_size` bounds the vocabulary-wide memory (tokens).
    Gradients reach the student logits, the student hidden states (through s2t) and the projectors.
    """
    student_options = DWAKDLossOptions(
        temperature=temperature, divergence=divergence, skew=skew, entropy_weighting=False, dtw=False,
        chunk_size=chunk_size,
    )
    check_inputs(student, teacher, projectors, student_options)
    student_responses, teacher_responses = gather_responses(student), gather_responses(teacher)
    check_responses(student_responses, teacher_responses)
    denominator = loss_denominator(num_items_in_batch, student_responses)

    attention = cross_model_attention(student_responses, teacher_responses, projectors)
    student_terms = student_space(
        student, student_responses, attention.t2s_hidden[student_responses.valid], student_options
    )
    teacher_terms = teacher_space(
        teacher, teacher_responses, attention.s2t_hidden[teacher_responses.valid],
        replace(student_options, divergence="forward_kl"),
    )
    components = {
        "ce_t2s": student_terms["projector_ce"].sum() / denominator,
        "kd_student": (student_terms["kd"] * student_terms["correct"]).sum() / denominator,
        "kd_teacher": teacher_terms["kd"].sum() / denominator,
    }
    metrics = {name: value.detach() for name, value in components.items()}
    metrics["t2s_acc"] = student_terms["correct"].float().mean()
    metrics["s2t_acc"] = teacher_terms["correct"].float().mean()
    return sum(components.values()), metrics
