"""DSKD with cross-model attention (Zhang et al. 2024, arXiv 2406.17328), docs/method.md, Baselines.

The DWA-KD backbone (`hf_dwakd.objective`: cross-model attention with per-example normalisation, both spaces'
divergences, the projector warm-up CE) without entropy weights and without Soft-DTW; the student-space KD counts
only the positions where the projected teacher predicts the label, as DSKD does.
"""

import math

import torch

from hf_dwakd.baselines.common import baseline_method
from hf_dwakd.objective.attention import cross_model_attention
from hf_dwakd.objective.checks import check_pair, check_projectors, check_responses, loss_denominator
from hf_dwakd.objective.dual_space import student_space, teacher_space
from hf_dwakd.objective.options import DWAKDLossOptions
from hf_dwakd.objective.outputs import SideOutputs
from hf_dwakd.objective.responses import gather_responses
from hf_dwakd.projectors import PROJECTOR_FIELDS, DWAKDProjectors
from hf_dwakd.registry import register_method


def dskd_loss(
    student: SideOutputs,
    teacher: SideOutputs,
    num_items_in_batch: int | torch.Tensor | None = None,
    **options,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DSKD KD term (see `dskd_terms` for the options); the caller forms `(1 - kd_rate) * CE + kd_rate * kd`."""
    kd, _, metrics = dskd_terms(student, teacher, num_items_in_batch, **options)
    return kd, metrics


def dskd_terms(
    student: SideOutputs,
    teacher: SideOutputs,
    num_items_in_batch: int | torch.Tensor | None = None,
    *,
    projectors: DWAKDProjectors,
    temperature: float = 2.0,
    divergence: str = "forward_kl",
    teacher_divergence: str = "forward_kl",
    skew: float = 0.1,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """`(kd, ce, metrics)`: the DSKD KD term L_ce_t2s + sum_i 1{argmax z_t2s(i) = y_i} D(p_t2s || p_s)(i) +
    sum_j D_t(p_t || p_s2t)(j) and the student CE (from the same student logit rows), each divided by
    `num_items_in_batch` (student response tokens of the whole batch; None: this batch's count).

    `divergence` (a name of the objective's registry, DSKD's kd_objective) applies to the student space,
    `teacher_divergence` to the teacher space (forward KL, as DSKD's code has it). Both spaces divide logits by
    `temperature`. `chunk_size` bounds the vocabulary-wide memory (tokens). Gradients reach the student logits,
    the student hidden states (through s2t) and the projectors.
    """
    options = DWAKDLossOptions(
        kd_temperature=temperature,
        kd_divergence=divergence,
        kd_teacher_divergence=teacher_divergence,
        kd_skew=skew,
        use_entropy_weighting=False,
        use_dtw=False,
        kd_chunk_size=chunk_size,
    )
    check_pair(student, teacher)
    check_projectors(projectors, student, teacher)
    student_responses, teacher_responses = gather_responses(student), gather_responses(teacher)
    check_responses(student_responses, teacher_responses)
    denominator = loss_denominator(num_items_in_batch, student_responses)

    attention = cross_model_attention(student_responses, teacher_responses, projectors)
    student_terms = student_space(
        student, student_responses, attention.t2s_hidden[student_responses.valid], options, with_cross_entropy=True
    )
    teacher_terms = teacher_space(teacher, teacher_responses, attention.s2t_hidden[teacher_responses.valid], options)
    components = {
        "ce_t2s": student_terms["projector_ce"].sum() / denominator,
        "kd_student": (student_terms["kd"] * student_terms["correct"]).sum() / denominator,
        "kd_teacher": teacher_terms["kd"].sum() / denominator,
    }
    metrics = {name: value.detach() for name, value in components.items()}
    metrics["t2s_acc"] = student_terms["correct"].float().mean()
    metrics["s2t_acc"] = teacher_terms["correct"].float().mean()
    return sum(components.values()), student_terms["ce"].sum() / denominator, metrics


def _kd_of_config(args, student, teacher, num_items_in_batch, context):
    return dskd_terms(
        student,
        teacher,
        num_items_in_batch,
        projectors=context.projectors,
        temperature=args.kd_temperature,
        divergence=args.kd_divergence,
        teacher_divergence=args.kd_teacher_divergence or "forward_kl",
        skew=args.kd_skew,
        chunk_size=args.kd_chunk_size,
    )


def _check_weights_sum_to_one(args):
    """DSKD trains (1 - kd_rate) CE + kd_rate KD: `ce_weight` defaults to 1 - kd_weight; a pair must sum to 1."""
    if not 0 <= args.kd_weight <= 1:
        raise ValueError(f"kd_method='dskd' needs `kd_weight` (its kd_rate) in [0, 1], got {args.kd_weight}.")
    if not math.isclose(args.ce_weight + args.kd_weight, 1, abs_tol=1e-9):
        raise ValueError(
            f"kd_method='dskd' trains (1 - kd_weight) * CE + kd_weight * KD, but `ce_weight` ({args.ce_weight}) + "
            f"`kd_weight` ({args.kd_weight}) != 1: set only `kd_weight`, or a pair that sums to 1."
        )


register_method(
    baseline_method(
        "dskd",
        _kd_of_config,
        fields=("kd_divergence", "kd_teacher_divergence", "kd_skew", *PROJECTOR_FIELDS),
        token_sum_metrics=("kd_student", "kd_teacher", "ce_t2s"),
        needs_projectors=True,
        several_teachers=True,
        defaults=lambda args: {"ce_weight": 1 - args.kd_weight},
        check=_check_weights_sum_to_one,
    )
)
