"""Checks of the losses' inputs, each error naming the field and the fix, raised before any vocabulary-wide work;
and the one divisor of every method's token sums."""

import torch

from hf_dwakd.objective.outputs import SideOutputs
from hf_dwakd.objective.responses import Responses
from hf_dwakd.projectors import DWAKDProjectors


def check_side(side: SideOutputs, name: str) -> None:
    if not isinstance(side, SideOutputs):
        raise TypeError(f"{name} must be a SideOutputs (see shift_for_next_token), got {type(side).__name__}.")
    if side.hidden.dim() != 3:
        raise ValueError(f"{name}.hidden must be (batch, length, hidden size), got shape {tuple(side.hidden.shape)}.")
    batch, length, hidden_size = side.hidden.shape
    for field in ("input_embeds", "target_embeds"):
        if getattr(side, field).shape != (batch, length, hidden_size):
            raise ValueError(
                f"{name}.{field} has shape {tuple(getattr(side, field).shape)}; expected ({batch}, {length}, "
                f"{hidden_size}) to match {name}.hidden."
            )
    if side.labels.shape != (batch, length):
        raise ValueError(f"{name}.labels has shape {tuple(side.labels.shape)}; expected ({batch}, {length}).")
    if side.logits is None and side.output_layer is None:
        raise ValueError(f"{name} has neither `logits` nor `output_layer`: set one (see shift_for_next_token).")
    width = side.logit_width
    if side.logits is not None:
        if side.logits.dim() != 3 or side.logits.shape[:2] != (batch, length):
            raise ValueError(
                f"{name}.logits must be (batch, length, vocabulary) = ({batch}, {length}, V) like {name}.labels, "
                f"got shape {tuple(side.logits.shape)}."
            )
        width = side.logits.shape[-1]
    if side.lm_head_weight.shape != (width, hidden_size):
        raise ValueError(
            f"{name}.lm_head_weight has shape {tuple(side.lm_head_weight.shape)}; expected ({width}, {hidden_size}) "
            f"(logit width x hidden size)."
        )
    if isinstance(side.vocab_size, bool) or not isinstance(side.vocab_size, int) or not 2 <= side.vocab_size <= width:
        raise ValueError(
            f"{name}.vocab_size must be len(tokenizer), an int in [2, {width}] (the logit width), "
            f"got {side.vocab_size!r}."
        )


def check_pair(student: SideOutputs, teacher: SideOutputs) -> None:
    """Both sides well formed and holding the same examples (every method's first check)."""
    check_side(student, "student")
    check_side(teacher, "teacher")
    if student.labels.shape[0] != teacher.labels.shape[0]:
        raise ValueError(
            f"student and teacher batches differ in size ({student.labels.shape[0]} vs {teacher.labels.shape[0]}): "
            "both sides must hold the same examples in the same order."
        )


def check_projectors(projectors: DWAKDProjectors, student: SideOutputs, teacher: SideOutputs) -> None:
    sizes = (student.hidden.shape[-1], teacher.hidden.shape[-1])
    if not isinstance(projectors, DWAKDProjectors):
        raise TypeError(f"projectors must be DWAKDProjectors{sizes}, got {type(projectors).__name__}.")
    if (projectors.student_hidden_size, projectors.teacher_hidden_size) != sizes:
        raise ValueError(
            f"projectors were built for hidden sizes ({projectors.student_hidden_size}, "
            f"{projectors.teacher_hidden_size}) but the student and teacher have {sizes}: "
            f"build DWAKDProjectors{sizes}."
        )


def check_responses(student: Responses, teacher: Responses) -> None:
    if student.num_tokens == 0:
        raise ValueError(
            "student.labels have no response position (all -100): pass batches with at least one response token."
        )
    mismatch = (student.lengths > 0) != (teacher.lengths > 0)
    if bool(mismatch.any()):
        rows = mismatch.nonzero().flatten().tolist()
        raise ValueError(
            f"examples {rows} have response positions on one side only (student lengths "
            f"{student.lengths.tolist()}, teacher lengths {teacher.lengths.tolist()}): both tokenizations must "
            f"cover the same response text."
        )


def loss_denominator(num_items_in_batch, student: Responses) -> torch.Tensor | int | float:
    """The divisor of every method's token sums: `num_items_in_batch`, the number of student response tokens in
    the whole accumulated, all-process batch; None: this batch's own count (at least 1).

    Under `nn.DataParallel`, Trainer passes one count per GPU, shape (n_gpu, 1), meant for each replica's own
    loss. This loss runs once on the whole batch, so it divides by their sum: the value of Trainer's mean over
    the replicas' losses.
    """
    if num_items_in_batch is None:
        return max(student.num_tokens, 1)
    if isinstance(num_items_in_batch, torch.Tensor):
        count = num_items_in_batch.sum()
        if num_items_in_batch.numel() == 0 or not count.item() > 0:
            raise ValueError(f"num_items_in_batch must be a count > 0 (or one per GPU), got {num_items_in_batch!r}.")
        return count.to(student.hidden.device)
    if isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, (int, float)) or not (
        num_items_in_batch > 0
    ):
        raise ValueError(
            f"num_items_in_batch must be the number of student response tokens (> 0), got {num_items_in_batch!r}."
        )
    return num_items_in_batch
