"""ULD: Universal Logit Distillation (Boizard et al. 2024, arXiv 2402.12030).

Closed-form Wasserstein distance between the two next-token distributions under a uniform cost: the L1 distance
between the probability vectors sorted in decreasing order, the shorter vocabulary zero-padded. Positions pair
by order within the response: each example keeps its first min(n_student, n_teacher) response positions.
"""

import torch

from hf_dwakd.baselines.common import baseline_method, first_common, response_logits
from hf_dwakd.objective.checks import check_pair, loss_denominator
from hf_dwakd.objective.outputs import SideOutputs
from hf_dwakd.objective.responses import gather_responses
from hf_dwakd.registry import register_method


def _sorted_probabilities(probabilities: torch.Tensor, width: int, top_k: int | None) -> torch.Tensor:
    if top_k is None:
        head = probabilities.sort(dim=-1, descending=True).values
    else:
        head = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1).values
    return torch.nn.functional.pad(head, (0, width - head.shape[-1]))


def uld_loss(
    student: SideOutputs,
    teacher: SideOutputs,
    num_items_in_batch: int | torch.Tensor | None = None,
    *,
    top_k: int | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ULD KD term: sum over paired positions of ||sort(p_s) - sort(p_t)||_1, divided by `num_items_in_batch`
    (student response tokens of the whole batch; None: this batch's count). The student CE is the caller's.

    `top_k`: compare only the k largest probabilities of each side, so a large vocabulary needs no full sort;
    the tail beyond rank k then enters through its total mass, |tail_s - tail_t|, a lower bound of its exact
    share. None (default) is exact. Gradients reach the student logits only.
    """
    check_pair(student, teacher)
    if top_k is not None and top_k < 1:
        raise ValueError(f"uld top_k={top_k} must be a positive integer, or None for the exact sort.")
    if temperature <= 0:
        raise ValueError(f"uld temperature={temperature} must be positive.")
    student_responses, teacher_responses = gather_responses(student), gather_responses(teacher)
    keep_student, keep_teacher = first_common(student_responses, teacher_responses)
    student_logits = response_logits(student, student_responses)
    teacher_logits = response_logits(teacher, teacher_responses, detach=True)
    student_probs = torch.softmax(student_logits[keep_student] / temperature, dim=-1)
    teacher_probs = torch.softmax(teacher_logits[keep_teacher] / temperature, dim=-1)

    width = max(student.vocab_size, teacher.vocab_size)
    if top_k is not None:
        width = min(width, top_k)
    student_head = _sorted_probabilities(student_probs, width, top_k)
    teacher_head = _sorted_probabilities(teacher_probs, width, top_k)
    distance = (student_head - teacher_head).abs().sum(dim=-1)
    if top_k is not None:
        distance = distance + (student_head.sum(dim=-1) - teacher_head.sum(dim=-1)).abs()

    kd = distance.sum() / loss_denominator(num_items_in_batch, student_responses)
    metrics = {
        "uld_distance": distance.detach().sum() / max(distance.numel(), 1),
        "uld_paired_tokens": keep_student.sum(),
    }
    return kd, metrics


def _kd_of_config(args, student, teacher, num_items_in_batch, context):
    return uld_loss(student, teacher, num_items_in_batch, top_k=args.uld_top_k, temperature=args.kd_temperature)


register_method(baseline_method("uld", _kd_of_config, fields=("uld_top_k",), several_teachers=True))
