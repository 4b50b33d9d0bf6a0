"""The DWA-KD loss (docs/method.md, Loss): lambda_ce CE + lambda_kd (L_stu + L_tea + L_ce_t2s) + lambda_dtw L_DTW."""

import torch

from hf_dwakd.objective.alignment import attention_band, embedding_alignment, hidden_alignment
from hf_dwakd.objective.attention import CrossModelAttention, cross_model_attention
from hf_dwakd.objective.checks import check_inputs, check_responses, loss_denominator
from hf_dwakd.objective.dual_space import student_cross_entropy, student_space, teacher_space
from hf_dwakd.objective.options import DWAKDLossOptions
from hf_dwakd.objective.outputs import SideOutputs
from hf_dwakd.objective.responses import Responses, gather_responses
from hf_dwakd.objective.weights import (
    normalise_per_sequence,
    student_raw_weights,
    student_weights,
    teacher_raw_weights,
)
from hf_dwakd.projectors import DWAKDProjectors

# Which lambda multiplies each summed term.
TERM_WEIGHTS = {
    "ce": "ce_weight",
    "kd_student": "kd_weight",
    "kd_teacher": "kd_weight",
    "ce_t2s": "kd_weight",
    "dtw_hidden": "dtw_weight",
    "dtw_embed": "dtw_weight",
}


def _term_weight(name: str, options: DWAKDLossOptions) -> float:
    weight = getattr(options, TERM_WEIGHTS[name])
    return weight * options.kd_student_scale if name == "kd_student" else weight


def _dual_space_kd(
    student: SideOutputs,
    teacher: SideOutputs,
    student_responses: Responses,
    teacher_responses: Responses,
    attention: CrossModelAttention,
    options: DWAKDLossOptions,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Summed student CE (if ce_weight > 0; computed here to share the student logits' pass), L_stu, L_tea,
    L_ce_t2s (docs/method.md, Dual-space KD), and the weight and accuracy statistics."""
    with_cross_entropy = options.ce_weight > 0
    student_terms = student_space(
        student, student_responses, attention.t2s_hidden[student_responses.valid], options, with_cross_entropy
    )
    teacher_terms = teacher_space(teacher, teacher_responses, attention.s2t_hidden[teacher_responses.valid], options)
    stats = {
        "t2s_acc": student_terms["correct"].float().mean(),
        "s2t_acc": teacher_terms["correct"].float().mean(),
    }
    student_token_weights = torch.ones_like(student_terms["kd"])
    teacher_token_weights = torch.ones_like(teacher_terms["kd"])
    if options.entropy_weighting:
        batch_size = student_responses.lengths.shape[0]
        gate = student_terms["gate"] if options.teacher_gate else None
        student_token_weights = student_weights(
            student_terms["entropy"],
            gate,
            options.student_weight_normalization,
            student_responses.batch_index,
            batch_size,
        )
        stats["weight_student"] = student_raw_weights(student_terms["entropy"], gate, options.teacher_gate).mean()
        raw = teacher_raw_weights(teacher_terms["entropy"], teacher.vocab_size)
        teacher_token_weights = normalise_per_sequence(raw, teacher_responses.batch_index, batch_size)
        stats["weight_teacher"] = raw.mean()
    sums = {"ce": student_terms["ce"].sum()} if with_cross_entropy else {}
    sums |= {
        "kd_student": (student_token_weights * student_terms["kd"]).sum(),
        "kd_teacher": (teacher_token_weights * teacher_terms["kd"]).sum(),
        "ce_t2s": student_terms["projector_ce"].sum(),
    }
    return sums, stats


def _alignment(
    student_responses: Responses,
    teacher_responses: Responses,
    projectors: DWAKDProjectors,
    attention: CrossModelAttention | None,
    options: DWAKDLossOptions,
) -> dict[str, torch.Tensor]:
    """Summed per-sequence Soft-DTW divergences of the pairs switched on (docs/method.md, Soft-DTW alignment)."""
    band = None
    if options.dtw_band:
        band = attention_band(
            attention.t2s_attention,
            student_responses.lengths,
            teacher_responses.lengths,
            base=options.band_base,
            beta=options.band_beta,
            alpha=options.band_alpha,
            penalty=options.band_penalty,
        )
    pairs = {
        "dtw_hidden": (options.dtw_hidden, hidden_alignment),
        "dtw_embed": (options.dtw_embed, embedding_alignment),
    }
    return {
        name: alignment(
            student_responses, teacher_responses, projectors, options.gamma, band, options.dtw_backend
        ).sum()
        for name, (enabled, alignment) in pairs.items()
        if enabled
    }


def dwakd_loss(
    student: SideOutputs,
    teacher: SideOutputs,
    projectors: DWAKDProjectors,
    options: DWAKDLossOptions,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss and its detached components.

    Every token sum and the per-sequence Soft-DTW sum is divided by `num_items_in_batch`, the number of student
    response tokens in the whole accumulated, all-process batch (None: this batch's own count), so splitting a
    batch changes nothing. Components (only those switched on): `ce`, `kd_student`, `kd_teacher`, `ce_t2s`,
    `dtw_hidden`, `dtw_embed` (each divided, before its lambda), `weight_student` and `weight_teacher` (mean raw
    weight over this batch's response tokens), `t2s_acc` and `s2t_acc` (this batch's token accuracies).
    """
    check_inputs(student, teacher, projectors, options)
    student_responses = gather_responses(student)
    teacher_responses = gather_responses(teacher)
    check_responses(student_responses, teacher_responses)
    denominator = loss_denominator(num_items_in_batch, student_responses)

    sums: dict[str, torch.Tensor] = {}
    stats: dict[str, torch.Tensor] = {}
    if options.ce_weight > 0 and not options.uses_kd:
        sums["ce"] = student_cross_entropy(student, student_responses, options.chunk_size).sum()
    attention = None
    if options.uses_kd or (options.uses_dtw and options.dtw_band):
        attention = cross_model_attention(student_responses, teacher_responses, projectors)
    if options.uses_kd:
        kd_sums, stats = _dual_space_kd(student, teacher, student_responses, teacher_responses, attention, options)
        sums.update(kd_sums)
    if options.uses_dtw:
        sums.update(_alignment(student_responses, teacher_responses, projectors, attention, options))

    components = {name: value / denominator for name, value in sums.items()}
    loss = sum(_term_weight(name, options) * value for name, value in components.items())
    logged = {name: value.detach() for name, value in {**components, **stats}.items()}
    return loss, logged
