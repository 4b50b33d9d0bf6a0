"""The loss of each `kd_method` (docs/method.md, Baselines) on the two models' `SideOutputs`.

`dwakd` is the full objective of `objective/`; the baselines train `ce_weight * CE + kd_weight * KD` with the
KD term of `baselines/`; `sft` is the student cross-entropy alone. Every term is a token sum divided by
`num_items_in_batch` (docs/method.md, Loss).
"""

from .baselines import dskd_loss, mined_loss, multilevel_ot_loss, uld_loss
from .objective import dwakd_loss, gather_responses
from .objective.checks import loss_denominator
from .objective.dual_space import student_cross_entropy


def distillation_loss(args, student, teacher, num_items_in_batch, *, projectors=None, aligner=None, step=0):
    """`(loss, metrics)` of `args.kd_method`; `projectors` for dwakd/dskd, `aligner` (a `MinEDAligner`) for mined."""
    if args.kd_method == "dwakd":
        return dwakd_loss(student, teacher, projectors, args.loss_options(step), num_items_in_batch)

    responses = gather_responses(student)
    ce = student_cross_entropy(student, responses, args.kd_chunk_size).sum() / loss_denominator(
        num_items_in_batch, responses
    )
    if args.kd_method == "sft":
        return ce, {"ce": ce.detach()}
    kd, metrics = _baseline_kd(args, student, teacher, num_items_in_batch, projectors, aligner)
    return args.ce_weight * ce + args.kd_weight * kd, {"ce": ce.detach(), "kd": kd.detach(), **metrics}


def _baseline_kd(args, student, teacher, num_items_in_batch, projectors, aligner):
    method, temperature = args.kd_method, args.kd_temperature
    if method == "dskd":
        return dskd_loss(
            student,
            teacher,
            num_items_in_batch,
            projectors=projectors,
            temperature=temperature,
            divergence=args.kd_divergence,
            skew=args.kd_skew,
            chunk_size=args.kd_chunk_size,
        )
    if method == "uld":
        return uld_loss(student, teacher, num_items_in_batch, top_k=args.uld_top_k, temperature=temperature)
    if method == "mined":
        return mined_loss(
            student,
            teacher,
            num_items_in_batch,
            teacher_positions=aligner.teacher_positions(student.labels, teacher.labels),
            teacher_to_student=aligner.teacher_to_student,
            top_k=args.mined_top_k,
            temperature=temperature,
        )
    return multilevel_ot_loss(
        student,
        teacher,
        num_items_in_batch,
        top_k=args.ot_top_k,
        temperature=temperature,
        log_weight=args.ot_log_weight,
        sinkhorn_weight=args.ot_sinkhorn_weight,
        sinkhorn_epsilon=args.ot_sinkhorn_epsilon,
        sinkhorn_iterations=args.ot_sinkhorn_iterations,
    )
