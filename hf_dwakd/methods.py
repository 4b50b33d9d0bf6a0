"""The loss of each `kd_method` (docs/method.md, Baselines) on the two models' `SideOutputs`, as the registry
declares it, and its weighted sum over several teachers (docs/method.md, Several teachers).

`dwakd` is the full objective of `objective/`; the baselines of `baselines/` train `ce_weight * CE + kd_weight *
KD`; `sft` is the student cross-entropy alone. Every term is a token sum divided by `num_items_in_batch`
(docs/method.md, Loss). See `registry.py` to add a method.
"""

from typing import Any, NamedTuple

from hf_dwakd.registry import LossContext, get_method

# The components that depend on the student alone: logged once, not per teacher.
STUDENT_METRICS = ("ce",)


def distillation_loss(args, student, teacher, num_items_in_batch, *, projectors=None, aligner=None, step=0):
    """`(loss, metrics)` of `args.kd_method`; `projectors` for the methods that train them, `aligner` for those
    that build one (mined), `step` the optimizer step (for annealed knobs)."""
    context = LossContext(projectors=projectors, aligner=aligner, step=step)
    return get_method(args.kd_method).loss(args, student, teacher, num_items_in_batch, context)


class TeacherOutputs(NamedTuple):
    """One teacher's part of a step: its name, weight, `SideOutputs` on the batch, projectors and aligner."""

    name: str
    weight: float
    outputs: Any
    projectors: Any = None
    aligner: Any = None


def teacher_loss(args, student, teacher: TeacherOutputs, num_items_in_batch, *, step=0):
    """`(loss, metrics)` of `args.kd_method` with `teacher` alone, its weight not applied: the whole loss of a
    single-teacher run, and teacher k's `loss_k` with several."""
    return distillation_loss(
        args,
        student,
        teacher.outputs,
        num_items_in_batch,
        projectors=teacher.projectors,
        aligner=teacher.aligner,
        step=step,
    )


def several_teachers_loss(args, student, teachers: list[TeacherOutputs], num_items_in_batch, *, step=0):
    """`(loss, metrics)` with several teachers: `sum_k weight_k * loss_k`, `loss_k` the method's loss with teacher
    k alone. The weights sum to 1, so the student's own cross-entropy counts once and each teacher's
    distillation terms with its weight. Metrics: the student's (`ce`) once, every other one per teacher as
    `<teacher name>/<metric>` (before the teacher's weight)."""
    loss, metrics = 0, {}
    for teacher in teachers:
        loss_k, teacher_metrics = teacher_loss(args, student, teacher, num_items_in_batch, step=step)
        loss = loss + teacher.weight * loss_k
        for key, value in teacher_metrics.items():
            if key in STUDENT_METRICS:
                metrics.setdefault(key, value)
            else:
                metrics[f"{teacher.name}/{key}"] = value
    return loss, metrics


def metric_name(key: str) -> str:
    """The method's name of a logged metric (`kd_student` of `<teacher name>/kd_student`)."""
    return key.rpartition("/")[2]
