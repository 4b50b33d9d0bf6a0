"""DSKDv2's start of `s2t` (Zhang et al. 2025, arXiv 2504.11426, `--init-s2t-projector`): the map under which the
teacher's head gives the student's logits on the token strings both vocabularies hold."""

import torch
from torch import nn

from .overlap import TokenBytes


def shared_vocabulary(student: TokenBytes, teacher: TokenBytes) -> tuple[list[int], list[int]]:
    """`(student ids, teacher ids)` of the non-special token strings both vocabularies hold, one pair per string
    (its lowest id on each side)."""
    teacher_ids = {}
    for index, text in enumerate(teacher.texts):
        if text:
            teacher_ids.setdefault(text, index)
    pairs = {}
    for index, text in enumerate(student.texts):
        if text in teacher_ids:
            pairs.setdefault(text, (index, teacher_ids[text]))
    return [pair[0] for pair in pairs.values()], [pair[1] for pair in pairs.values()]


@torch.no_grad()
def pseudo_inverse_s2t(
    s2t: nn.Linear,
    student_head_weight: torch.Tensor,
    teacher_head_weight: torch.Tensor,
    student_bytes: TokenBytes,
    teacher_bytes: TokenBytes,
) -> int:
    """Set `s2t` to `pinv(W_t[shared]) W_s[shared]` (float64, bias 0), so that `W_t[shared] s2t(h) = W_s[shared] h`
    in the least-squares sense: the teacher head on a mapped student state gives the student's logits over the
    shared strings. Returns the number of shared strings."""
    student_ids, teacher_ids = shared_vocabulary(student_bytes, teacher_bytes)
    if len(student_ids) < s2t.out_features:  # fewer rows than W_t's columns: no unique least-squares solution
        raise ValueError(
            "projector_init='pseudo_inverse' needs at least as many token strings shared by the two vocabularies as "
            f"the teacher's hidden size ({s2t.out_features}); they share {len(student_ids)}. "
            "Use 'aligned' or 'random'."
        )
    device = s2t.weight.device
    student_rows = student_head_weight.detach()[torch.tensor(student_ids, device=student_head_weight.device)]
    teacher_rows = teacher_head_weight.detach()[torch.tensor(teacher_ids, device=teacher_head_weight.device)]
    weight = torch.linalg.pinv(teacher_rows.to(device, torch.float64)) @ student_rows.to(device, torch.float64)
    s2t.weight.copy_(weight.to(s2t.weight.dtype))
    if s2t.bias is not None:
        s2t.bias.zero_()
    return len(student_ids)
