"""What the baseline losses share: input checks, the KD normaliser, and response rows gathered by mask.

Every baseline loss has the signature `loss(student, teacher, num_items_in_batch=None, **options)` and returns
`(kd, metrics)`: `kd` is a sum over tokens divided by `num_items_in_batch` (docs/method.md, Loss), the student CE is
added by the caller, and `metrics` holds detached scalars for logging.
"""

from dataclasses import dataclass

import torch

from hf_dwakd.objective.checks import check_side
from hf_dwakd.objective.outputs import SideOutputs


def check_pair(student: SideOutputs, teacher: SideOutputs) -> None:
    check_side(student, "student")
    check_side(teacher, "teacher")
    if student.labels.shape[0] != teacher.labels.shape[0]:
        raise ValueError(
            f"student has {student.labels.shape[0]} examples and teacher {teacher.labels.shape[0]}; "
            "both sides must hold the same examples in the same order."
        )


def kd_denominator(student: SideOutputs, num_items_in_batch) -> torch.Tensor | int:
    """`num_items_in_batch`, or, when None, this batch's number of student response tokens (at least 1)."""
    if num_items_in_batch is None:
        return student.response_mask.sum().clamp(min=1)
    if not float(num_items_in_batch) > 0:
        raise ValueError(
            f"num_items_in_batch must be the number of student response tokens (> 0), got {num_items_in_batch!r}."
        )
    return num_items_in_batch


@dataclass
class ResponseRows:
    """One side's response positions, example by example in position order (the order of `labels[mask]`)."""

    logits: torch.Tensor  # (N, vocab_size) float32, the tokenizer's columns only
    example: torch.Tensor  # (N,) which example each row belongs to
    rank: torch.Tensor  # (N,) its index among that example's response positions
    lengths: torch.Tensor  # (B,) response positions per example


def response_rows(side: SideOutputs, detach: bool = False) -> ResponseRows:
    mask = side.response_mask
    example, position = mask.nonzero(as_tuple=True)
    logits = side.logits_at(example, position)[:, : side.vocab_size].float()
    rank = (mask.cumsum(dim=1) - 1)[example, position]
    return ResponseRows(logits.detach() if detach else logits, example, rank, mask.sum(dim=1))


def first_common(student: ResponseRows, teacher: ResponseRows) -> tuple[torch.Tensor, torch.Tensor]:
    """Row masks keeping each example's first min(n_student, n_teacher) response positions on both sides.

    The kept rows pair up in order: the k-th kept student row with the k-th kept teacher row.
    """
    common = torch.minimum(student.lengths, teacher.lengths)
    return student.rank < common[student.example], teacher.rank < common[teacher.example]
