"""What the baselines share: their config fields, their `ce_weight * CE + kd_weight * KD` loss, their logit rows,
and the pairing of response positions by order.

A baseline's KD term has the signature `kd_term(args, student, teacher, num_items_in_batch, context)` and returns
`(kd, metrics)`: `kd` is a sum over tokens divided by `num_items_in_batch` (docs/method.md, Loss), and `metrics` holds
detached scalars for logging. `baseline_method` turns it into a registered method.
"""

import torch

from hf_dwakd.objective.checks import loss_denominator
from hf_dwakd.objective.dual_space import student_cross_entropy
from hf_dwakd.objective.outputs import SideOutputs
from hf_dwakd.objective.responses import Responses, gather_responses
from hf_dwakd.registry import DistillationMethod

# The config fields every baseline with a teacher reads.
BASELINE_FIELDS = ("ce_weight", "kd_weight", "kd_temperature")


def check_weights(args) -> None:
    if args.ce_weight + args.kd_weight == 0:
        raise ValueError(
            f"`ce_weight` and `kd_weight` are both 0, so kd_method={args.kd_method!r} has nothing to train: set "
            "at least one of them > 0."
        )


def student_ce(student: SideOutputs, num_items_in_batch, chunk_size: int | None = None) -> torch.Tensor:
    """The student's cross-entropy summed over its response tokens, divided by `num_items_in_batch`."""
    responses = gather_responses(student)
    return student_cross_entropy(student, responses, chunk_size).sum() / loss_denominator(
        num_items_in_batch, responses
    )


def baseline_method(name: str, kd_term, *, fields=(), token_sum_metrics=(), check=None, **requirements):
    """A `DistillationMethod` training `ce_weight * CE + kd_weight * kd_term(...)`, logging `ce` and `kd`.

    `check` runs after the check that the two weights are not both 0; `requirements` are the other
    `DistillationMethod` fields (`needs_projectors`, `build_aligner`, `defaults`, ...).
    """

    def loss(args, student, teacher, num_items_in_batch, context):
        ce = student_ce(student, num_items_in_batch, args.kd_chunk_size)
        kd, metrics = kd_term(args, student, teacher, num_items_in_batch, context)
        return args.ce_weight * ce + args.kd_weight * kd, {"ce": ce.detach(), "kd": kd.detach(), **metrics}

    def check_config(args):
        check_weights(args)
        if check is not None:
            check(args)

    return DistillationMethod(
        name=name,
        loss=loss,
        fields=(*BASELINE_FIELDS, *fields),
        token_sum_metrics=frozenset({"ce", "kd", *token_sum_metrics}),
        check=check_config,
        **requirements,
    )


def response_logits(side: SideOutputs, responses: Responses, detach: bool = False) -> torch.Tensor:
    """(N, vocab_size) float32 logits at the response positions (the tokenizer's columns only)."""
    logits = side.logits_at(responses.batch_index, responses.position_index)[:, : side.vocab_size].float()
    return logits.detach() if detach else logits


def first_common(student: Responses, teacher: Responses) -> tuple[torch.Tensor, torch.Tensor]:
    """Row masks keeping each example's first min(n_student, n_teacher) response positions on both sides.

    The kept rows pair up in order: the k-th kept student row with the k-th kept teacher row.
    """
    common = torch.minimum(student.lengths, teacher.lengths)
    return student.rank < common[student.batch_index], teacher.rank < common[teacher.batch_index]
