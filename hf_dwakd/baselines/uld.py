"""ULD: Universal Logit Distillation (Boizard et al. 2024, arXiv 2402.12030).

Closed-form Wasserstein distance between the two next-token distributions under a uniform cost: the L1 distance
between the probability vectors sorted in decreasing order, the shorter vocabulary zero-padded. Positions pair
by order within the response: each example keeps its first min(n_student, n_teacher) response positions.
"""

import torch

from hf_dwakd.baselines.common import baseline_method, first_common, over_student_rows
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
    **options,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ULD KD term (see `uld_terms` for the options); the student CE is the caller's."""
    kd, _, metrics = uld_terms(student, teacher, num_items_in_batch, **options)
    return kd, metrics


def uld_terms(
    student: SideOutputs,
    teacher: SideOutputs,
    num_items_in_batch: int | torch.Tensor | None = None,
    *,
    top_k: int | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """`(kd, ce, metrics)`: the ULD KD term, sum over paired positions of ||sort(p_s) - sort(p_t)||_1, and the
    student CE from the same logit rows, each divided by `num_items_in_batch` (student response tokens of the whole
    batch; None: this batch's count).

    `top_k`: compare only the k largest probabilities of each side, so a large vocabulary needs no full sort;
    the tail beyond rank k then enters through its total mass, |tail_s - tail_t|, a lower bound of its exact
    share. None (default) is exact. `chunk_size` (tokens) bounds the vocabulary-wide memory. Gradients reach
    the student logits only.
    """
    check_pair(student, teacher)
    if top_k is not None and top_k < 1:
        raise ValueError(f"uld top_k={top_k} must be a positive integer, or None for the exact sort.")
    if temperature <= 0:
        raise ValueError(f"uld temperature={temperature} must be positive.")
    student_responses, teacher_responses = gather_responses(student), gather_responses(teacher)
    keep_student, keep_teacher = first_common(student_responses, teacher_responses)
    # The teacher response token each kept student token pairs with (0 where it pairs with none).
    partner = torch.zeros_like(student_responses.batch_index)
    partner[keep_student] = keep_teacher.nonzero(as_tuple=True)[0]
    width = max(student.vocab_size, teacher.vocab_size)
    if top_k is not None:
        width = min(width, top_k)

    def distances(logits, paired, partner_index):
        teacher_index = partner_index[paired]
        teacher_logits = teacher.logits_at(
            teacher_responses.batch_index[teacher_index], teacher_responses.position_index[teacher_index]
        )
        student_probs = torch.softmax(logits[paired, : student.vocab_size].float() / temperature, dim=-1)
        teacher_probs = torch.softmax(teacher_logits[:, : teacher.vocab_size].detach().float() / temperature, dim=-1)
        student_head = _sorted_probabilities(student_probs, width, top_k)
        teacher_head = _sorted_probabilities(teacher_probs, width, top_k)
        distance = (student_head - teacher_head).abs().sum(dim=-1)
        if top_k is not None:
            distance = distance + (student_head.sum(dim=-1) - teacher_head.sum(dim=-1)).abs()
        rows = paired.nonzero(as_tuple=True)[0]
        return {"distance": distance.new_zeros(logits.shape[0]).index_put((rows,), distance)}

    terms = over_student_rows(student, student_responses, distances, (keep_student, partner), chunk_size)
    denominator = loss_denominator(num_items_in_batch, student_responses)
    distance = terms["distance"]
    metrics = {
        "uld_distance": distance.detach().sum() / max(int(keep_student.sum()), 1),
        "uld_paired_tokens": keep_student.sum(),
    }
    return distance.sum() / denominator, terms["ce"].sum() / denominator, metrics


def _kd_of_config(args, student, teacher, num_items_in_batch, context):
    return uld_terms(
        student,
        teacher,
        num_items_in_batch,
        top_k=args.uld_top_k,
        temperature=args.kd_temperature,
        chunk_size=args.kd_chunk_size,
    )


register_method(baseline_method("uld", _kd_of_config, fields=("uld_top_k",), several_teachers=True))
