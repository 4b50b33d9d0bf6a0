"""The DWA-KD loss (docs/method.md, Loss): lambda_ce CE + lambda_kd (L_stu + L_tea + L_ce_t2s) + lambda_dtw L_DTW."""

import torch

from hf_dwakd.objective.alignment import attention_band, embedding_alignment, hidden_alignment
from hf_dwakd.objective.attention import CrossModelAttention, cross_model_attention
from hf_dwakd.objective.checks import check_pair, check_projectors, check_responses, loss_denominator
from hf_dwakd.objective.dual_space import student_cross_entropy, student_space, teacher_space
from hf_dwakd.objective.options import CONFIG_OPTIONS, DWAKDLossOptions
from hf_dwakd.objective.outputs import SideOutputs
from hf_dwakd.objective.responses import Responses, gather_responses
from hf_dwakd.objective.weights import (
    normalise_per_sequence,
    student_raw_weights,
    student_weights,
    teacher_raw_weights,
)
from hf_dwakd.ops import SoftDTWBand
from hf_dwakd.projectors import PROJECTOR_FIELDS, DWAKDProjectors
from hf_dwakd.registry import DistillationMethod, LossContext, register_method

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
    if options.use_entropy_weighting:
        batch_size = student_responses.lengths.shape[0]
        gate = student_terms["gate"] if options.use_teacher_gate else None
        student_token_weights = student_weights(
            student_terms["entropy"],
            gate,
            options.student_weight_normalization,
            student_responses.batch_index,
            batch_size,
        )
        stats["weight_student"] = student_raw_weights(student_terms["entropy"], gate, options.use_teacher_gate).mean()
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


def options_band(
    t2s_attention: torch.Tensor, student_responses: Responses, teacher_responses: Responses, options: DWAKDLossOptions
) -> SoftDTWBand:
    """The Soft-DTW band `attention_band` builds from `t2s_attention` with the options' `dtw_band_*` knobs."""
    return attention_band(
        t2s_attention,
        student_responses.lengths,
        teacher_responses.lengths,
        base=options.dtw_band_base,
        beta=options.dtw_band_beta,
        alpha=options.dtw_band_alpha,
        penalty=options.dtw_band_penalty,
    )


def _alignment(
    student_responses: Responses,
    teacher_responses: Responses,
    projectors: DWAKDProjectors,
    attention: CrossModelAttention | None,
    options: DWAKDLossOptions,
) -> dict[str, torch.Tensor]:
    """Summed per-sequence Soft-DTW divergences of the pairs switched on (docs/method.md, Soft-DTW alignment)."""
    band = None
    if options.use_dtw_band:
        band = options_band(attention.t2s_attention, student_responses, teacher_responses, options)
    pairs = {
        "dtw_hidden": (options.use_dtw_hidden, hidden_alignment),
        "dtw_embed": (options.use_dtw_embed, embedding_alignment),
    }
    return {
        name: alignment(
            student_responses, teacher_responses, projectors, options.dtw_gamma, band, options.dtw_backend
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
    if not isinstance(options, DWAKDLossOptions):
        raise TypeError(f"options must be a DWAKDLossOptions, got {type(options).__name__}.")
    check_pair(student, teacher)
    check_projectors(projectors, student, teacher)
    student_responses = gather_responses(student)
    teacher_responses = gather_responses(teacher)
    check_responses(student_responses, teacher_responses)
    denominator = loss_denominator(num_items_in_batch, student_responses)

    sums: dict[str, torch.Tensor] = {}
    stats: dict[str, torch.Tensor] = {}
    if options.ce_weight > 0 and not options.uses_kd:
        sums["ce"] = student_cross_entropy(student, student_responses, options.kd_chunk_size).sum()
    attention = None
    if options.uses_kd or (options.uses_dtw and options.use_dtw_band):
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


def _loss_of_config(args, student, teacher, num_items_in_batch, context: LossContext):
    return dwakd_loss(student, teacher, context.projectors, args.loss_options(context.step), num_items_in_batch)


register_method(
    DistillationMethod(
        name="dwakd",
        loss=_loss_of_config,
        # Every knob of the objective, and the config fields that schedule or train it.
        fields=(
            *CONFIG_OPTIONS,
            "kd_warmup_steps",
            "alignment_plot_steps",
            "dtw_gamma_end",
            "dtw_gamma_anneal_steps",
            *PROJECTOR_FIELDS,
        ),
        needs_projectors=True,
        embedding_projector=lambda args: args.loss_options().uses_dtw and args.use_dtw_embed,
        token_sum_metrics=frozenset(TERM_WEIGHTS),
        several_teachers=True,
    )
)
