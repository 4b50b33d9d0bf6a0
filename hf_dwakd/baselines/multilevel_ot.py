"""MultiLevelOT (Cui et al., AAAI 2025, arXiv 2412.14528): optimal transport between the two models' logit
distributions at the token level and at the sequence level.

Per example and side, the logits are divided by their standard deviation over the vocabulary and turned into
probabilities; the vocabulary columns are ranked by their total probability over the example's response
("holistic" sort: one order for the whole sequence) and the top k kept, so column c of the teacher faces column
c of the student at every position. Then:
- token level, on each example's first min(n_student, n_teacher) response positions paired in order:
  absolute difference sum_c |t_c - s_c| and logarithmic cost -sum_c t_c log s_c;
- sequence level: the entropic OT (Sinkhorn) cost between the student's and the teacher's response positions as
  two point clouds of k-vectors, with L1 ground cost and uniform weights, scaled by the student's length.
The standardisation, top-k = 50, the Sinkhorn settings and the 0.1 weights follow the authors' released code.
"""

import torch
import torch.nn.functional as F

from hf_dwakd.baselines.common import baseline_method, first_common, over_student_rows, response_logits
from hf_dwakd.objective.checks import check_pair, loss_denominator
from hf_dwakd.objective.outputs import SideOutputs
from hf_dwakd.objective.responses import Responses, gather_responses
from hf_dwakd.registry import register_method

STD_EPSILON = 1e-4  # added to the standard deviation, as in the released code


def _standardised_log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    standardised = logits / (logits.std(dim=-1, keepdim=True) + STD_EPSILON)
    return torch.log_softmax(standardised / temperature, dim=-1)


def _holistic_head(
    logits: torch.Tensor, responses: Responses, num_examples: int, k: int, temperature: float
) -> torch.Tensor:
    """(N, k) log-probabilities of each example's k columns of largest total probability, largest first."""
    log_probs = _standardised_log_probs(logits, temperature)
    totals = log_probs.new_zeros(num_examples, log_probs.shape[-1])
    totals.index_add_(0, responses.batch_index, log_probs.detach().exp())
    columns = totals.topk(k, dim=-1).indices
    return log_probs.gather(1, columns[responses.batch_index])


def _student_head_and_ce(student, responses, num_examples, k, temperature, chunk_size):
    """(N, k) the student's holistic head and (N,) its CE.

    Unchunked, each response row enters the output layer once. In chunks, the columns need every row's
    probabilities first: a pass without gradient sums them, then a checkpointed pass computes the head and the CE
    chunk by chunk (the rows enter the output layer twice, and once more in the backward)."""
    batch_index = responses.batch_index
    if chunk_size is None or responses.num_tokens <= chunk_size:
        logits = student.logits_at(batch_index, responses.position_index)
        ce = F.cross_entropy(logits.float(), responses.token_labels(), reduction="none")
        return _holistic_head(logits[:, : student.vocab_size].float(), responses, num_examples, k, temperature), ce
    totals = None
    with torch.no_grad():
        for start in range(0, responses.num_tokens, chunk_size):
            rows = slice(start, start + chunk_size)
            logits = student.logits_at(batch_index[rows], responses.position_index[rows])
            log_probs = _standardised_log_probs(logits[:, : student.vocab_size].float(), temperature)
            totals = log_probs.new_zeros(num_examples, log_probs.shape[-1]) if totals is None else totals
            totals.index_add_(0, batch_index[rows], log_probs.exp())
    columns = totals.topk(k, dim=-1).indices

    def head(logits, chunk_batch_index):
        log_probs = _standardised_log_probs(logits[:, : student.vocab_size].float(), temperature)
        return {"head": log_probs.gather(1, columns[chunk_batch_index])}

    terms = over_student_rows(student, responses, head, (batch_index,), chunk_size)
    return terms["head"], terms["ce"]


def _pack(values: torch.Tensor, responses: Responses) -> torch.Tensor:
    """(N, k) rows -> (B, n_max, k), each example's rows first in order, zeros after."""
    packed = values.new_zeros(responses.lengths.shape[0], int(responses.lengths.max()), values.shape[-1])
    return packed.index_put((responses.batch_index, responses.rank), values)


@torch.no_grad()
def sinkhorn_plan(
    cost: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, epsilon: float, iterations: int
) -> torch.Tensor:
    """Entropic OT plan (B, n, m) between uniform weights on the valid rows and on the valid columns (masks
    (B, n), (B, m)), by log-domain Sinkhorn iterations; each example with both sides non-empty sums to 1."""
    both = rows.any(dim=1) & columns.any(dim=1)
    rows, columns = rows & both[:, None], columns & both[:, None]
    log_rows = torch.where(rows, -rows.sum(dim=1, keepdim=True).clamp(min=1).log(), float("-inf"))
    log_columns = torch.where(columns, -columns.sum(dim=1, keepdim=True).clamp(min=1).log(), float("-inf"))
    log_kernel = (-cost / epsilon).masked_fill(~(rows[:, :, None] & columns[:, None, :]), float("-inf"))
    f = torch.zeros_like(log_rows)
    g = torch.zeros_like(log_columns)
    for _ in range(iterations):
        f = torch.where(rows, log_rows - torch.logsumexp(log_kernel + g[:, None, :], dim=2), float("-inf"))
        g = torch.where(columns, log_columns - torch.logsumexp(log_kernel + f[:, :, None], dim=1), float("-inf"))
    return (f[:, :, None] + log_kernel + g[:, None, :]).exp()


def multilevel_ot_loss(
    student: SideOutputs,
    teacher: SideOutputs,
    num_items_in_batch: int | torch.Tensor | None = None,
    **options,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MultiLevelOT KD term (see `multilevel_ot_terms` for the options); the student CE is the caller's."""
    kd, _, metrics = multilevel_ot_terms(student, teacher, num_items_in_batch, **options)
    return kd, metrics


def multilevel_ot_terms(
    student: SideOutputs,
    teacher: SideOutputs,
    num_items_in_batch: int | torch.Tensor | None = None,
    *,
    top_k: int = 50,
    temperature: float = 1.0,
    log_weight: float = 0.1,
    sinkhorn_weight: float = 0.1,
    sinkhorn_epsilon: float = 0.1,
    sinkhorn_iterations: int = 20,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """`(kd, ce, metrics)`: the MultiLevelOT KD term, (absolute + log_weight * logarithmic + sinkhorn_weight *
    sequence) summed over the batch, and the student CE from the same logit rows, each divided by
    `num_items_in_batch` (student response tokens of the whole batch; None: this batch's count). `chunk_size`
    (tokens) bounds the student's vocabulary-wide memory.

    The sequence term of an example is its Sinkhorn cost times its number of student response tokens, so all
    three are sums over tokens. The transport plan is computed without gradient (the cost's gradient at the
    optimum); gradients reach the student logits only.
    """
    check_pair(student, teacher)
    if top_k < 1:
        raise ValueError(f"multilevel_ot top_k={top_k} must be a positive integer.")
    if temperature <= 0 or sinkhorn_epsilon <= 0 or sinkhorn_iterations < 1:
        raise ValueError(
            f"multilevel_ot needs temperature > 0, sinkhorn_epsilon > 0 and sinkhorn_iterations >= 1; got "
            f"{temperature}, {sinkhorn_epsilon}, {sinkhorn_iterations}."
        )
    num_examples = student.labels.shape[0]
    k = min(top_k, student.vocab_size, teacher.vocab_size)
    student_responses, teacher_responses = gather_responses(student), gather_responses(teacher)
    teacher_logits = response_logits(teacher, teacher_responses, detach=True)
    student_log_head, ce = _student_head_and_ce(
        student, student_responses, num_examples, k, temperature, chunk_size
    )
    teacher_log_head = _holistic_head(teacher_logits, teacher_responses, num_examples, k, temperature)
    student_head, teacher_head = student_log_head.exp(), teacher_log_head.exp()

    keep_student, keep_teacher = first_common(student_responses, teacher_responses)
    paired_teacher = teacher_head[keep_teacher]
    absolute = (paired_teacher - student_head[keep_student]).abs().sum()
    logarithmic = -(paired_teacher * student_log_head[keep_student]).sum()

    sequence = student_head.new_zeros(())
    if student_head.shape[0] and teacher_head.shape[0]:
        student_points, teacher_points = _pack(student_head, student_responses), _pack(teacher_head, teacher_responses)
        cost = torch.cdist(student_points, teacher_points, p=1)
        student_valid = torch.arange(student_points.shape[1], device=cost.device) < student_responses.lengths[:, None]
        teacher_valid = torch.arange(teacher_points.shape[1], device=cost.device) < teacher_responses.lengths[:, None]
        plan = sinkhorn_plan(cost.detach(), student_valid, teacher_valid, sinkhorn_epsilon, sinkhorn_iterations)
        sequence = (student_responses.lengths[:, None, None] * plan * cost).sum()

    denominator = loss_denominator(num_items_in_batch, student_responses)
    kd = (absolute + log_weight * logarithmic + sinkhorn_weight * sequence) / denominator
    metrics = {
        "multilevel_ot_absolute": absolute.detach() / denominator,
        "multilevel_ot_logarithmic": logarithmic.detach() / denominator,
        "multilevel_ot_sequence": sequence.detach() / denominator,
    }
    return kd, ce.sum() / denominator, metrics


def _kd_of_config(args, student, teacher, num_items_in_batch, context):
    return multilevel_ot_terms(
        student,
        teacher,
        num_items_in_batch,
        top_k=args.ot_top_k,
        temperature=args.kd_temperature,
        log_weight=args.ot_log_weight,
        sinkhorn_weight=args.ot_sinkhorn_weight,
        sinkhorn_epsilon=args.ot_sinkhorn_epsilon,
        sinkhorn_iterations=args.ot_sinkhorn_iterations,
        chunk_size=args.kd_chunk_size,
    )


register_method(
    baseline_method(
        "multilevel_ot",
        _kd_of_config,
        fields=("ot_top_k", "ot_log_weight", "ot_sinkhorn_weight", "ot_sinkhorn_epsilon", "ot_sinkhorn_iterations"),
        token_sum_metrics=("multilevel_ot_absolute", "multilevel_ot_logarithmic", "multilevel_ot_sequence"),
        several_teachers=True,
    )
)
