"""MinED KD term (FuseLLM, Wan et al. 2024, arXiv 2401.10491): the teacher's next-token distribution carried onto
the student vocabulary through the minimum-edit-distance vocabulary map, then KL.

The alignment (`MinEDAligner.teacher_positions`) and the map (`MinEDAligner.teacher_to_student`) come from the
data side; this module only needs tensors.
"""

import torch

from hf_dwakd.baselines.common import baseline_method, over_student_rows
from hf_dwakd.objective.checks import check_pair, loss_denominator
from hf_dwakd.objective.outputs import SideOutputs
from hf_dwakd.objective.responses import gather_responses
from hf_dwakd.registry import register_method


def project_teacher_logits(
    teacher_logits: torch.Tensor, teacher_to_student: torch.Tensor, student_vocab_size: int, top_k: int | None
) -> torch.Tensor:
    """(A, V_t) teacher logits -> (A, V_s) logits over the student vocabulary.

    A student token takes the largest logit among the teacher tokens mapped onto it (FuseLLM keeps the first,
    i.e. most probable, of duplicates), and -inf (probability 0) when none is. `top_k`: only the teacher's k
    most probable tokens are carried over, as FuseLLM stores them (it uses 10); None carries every token.
    """
    if top_k is None:
        values, student_ids = teacher_logits, teacher_to_student.expand_as(teacher_logits)
    else:
        values, teacher_ids = teacher_logits.topk(min(top_k, teacher_logits.shape[-1]), dim=-1)
        student_ids = teacher_to_student[teacher_ids]
    projected = values.new_full((teacher_logits.shape[0], student_vocab_size), float("-inf"))
    return projected.scatter_reduce(1, student_ids, values, reduce="amax")


def _check_alignment(student, teacher, teacher_positions, teacher_to_student):
    if teacher_positions.shape != student.labels.shape:
        raise ValueError(
            f"teacher_positions is {tuple(teacher_positions.shape)} but student.labels is "
            f"{tuple(student.labels.shape)}; compute it with MinEDAligner.teacher_positions on the same labels."
        )
    aligned = teacher_positions >= 0
    if bool((aligned & ~student.response_mask).any()):
        raise ValueError("teacher_positions aligns positions outside the student response; they must hold -1.")
    example, position = aligned.nonzero(as_tuple=True)
    partner = teacher_positions[example, position]
    if bool((partner >= teacher.labels.shape[1]).any()) or not bool(teacher.response_mask[example, partner].all()):
        raise ValueError(
            "teacher_positions points at teacher positions outside the teacher response; the two label tensors "
            "given to MinEDAligner.teacher_positions must be the ones in the SideOutputs."
        )
    if teacher_to_student.shape != (teacher.vocab_size,):
        raise ValueError(
            f"teacher_to_student has shape {tuple(teacher_to_student.shape)}, expected ({teacher.vocab_size},): "
            "one student id per teacher token (MinEDAligner.teacher_to_student of this tokenizer pair)."
        )
    if bool((teacher_to_student < 0).any() | (teacher_to_student >= student.vocab_size).any()):
        raise ValueError(f"teacher_to_student holds ids outside the student vocabulary [0, {student.vocab_size}).")


def mined_loss(
    student: SideOutputs,
    teacher: SideOutputs,
    num_items_in_batch: int | torch.Tensor | None = None,
    **options,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MinED KD term (see `mined_terms` for the options); the student CE is the caller's."""
    kd, _, metrics = mined_terms(student, teacher, num_items_in_batch, **options)
    return kd, metrics


def mined_terms(
    student: SideOutputs,
    teacher: SideOutputs,
    num_items_in_batch: int | torch.Tensor | None = None,
    *,
    teacher_positions: torch.Tensor,
    teacher_to_student: torch.Tensor,
    top_k: int | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """`(kd, ce, metrics)`: the MinED KD term, sum over student response positions of KL(q || p_s), and the student
    CE from the same logit rows, each divided by `num_items_in_batch` (student response tokens of the whole batch;
    None: this batch's count).

    q is the projected teacher distribution where `teacher_positions` aligns the position, else the one-hot
    label (as in FuseLLM), where the KL is the student's CE. Both sides are divided by `temperature`.
    `chunk_size` (tokens) bounds the vocabulary-wide memory. Gradients reach the student logits only.
    """
    check_pair(student, teacher)
    teacher_positions = teacher_positions.to(student.labels.device)
    teacher_to_student = teacher_to_student.to(student.labels.device)
    _check_alignment(student, teacher, teacher_positions, teacher_to_student)
    if top_k is not None and top_k < 1:
        raise ValueError(f"mined top_k={top_k} must be a positive integer, or None for every teacher token.")
    if temperature <= 0:
        raise ValueError(f"mined temperature={temperature} must be positive.")

    responses = gather_responses(student)
    labels = student.labels[student.response_mask]
    partner = teacher_positions[student.response_mask]

    def divergences(logits, labels, batch_index, partner):
        student_log_probs = torch.log_softmax(logits[:, : student.vocab_size].float() / temperature, dim=-1)
        aligned = partner >= 0
        teacher_rows = teacher.logits_at(batch_index[aligned], partner[aligned])
        target_logits = project_teacher_logits(
            teacher_rows[:, : teacher.vocab_size].detach().float() / temperature,
            teacher_to_student,
            student.vocab_size,
            top_k,
        )
        target_log_probs = torch.log_softmax(target_logits, dim=-1)
        target_probs = target_log_probs.exp()
        gap = torch.where(target_probs > 0, target_log_probs - student_log_probs[aligned], 0.0)
        kl = (target_probs * gap).sum(dim=-1)
        # Unaligned positions: the KL from the one-hot label, the student's CE at the temperature.
        label_ce = -student_log_probs.gather(1, labels[:, None]).squeeze(1)
        kd = label_ce.index_put((aligned.nonzero(as_tuple=True)[0],), kl)
        return {"kd": kd, "kl": torch.zeros_like(kd).index_put((aligned.nonzero(as_tuple=True)[0],), kl.detach())}

    terms = over_student_rows(
        student, responses, divergences, (labels, responses.batch_index, partner), chunk_size
    )
    denominator = loss_denominator(num_items_in_batch, responses)
    aligned = partner >= 0
    metrics = {
        "mined_kl": terms["kl"].sum() / max(int(aligned.sum()), 1),
        "mined_aligned_fraction": aligned.float().sum() / max(aligned.numel(), 1),
    }
    return terms["kd"].sum() / denominator, terms["ce"].sum() / denominator, metrics


def _kd_of_config(args, student, teacher, num_items_in_batch, context):
    aligner = context.aligner
    return mined_terms(
        student,
        teacher,
        num_items_in_batch,
        teacher_positions=aligner.teacher_positions(student.labels, teacher.labels),
        teacher_to_student=aligner.teacher_to_student,
        top_k=args.mined_top_k,
        temperature=args.kd_temperature,
        chunk_size=args.kd_chunk_size,
    )


def _build_aligner(args, student_tokenizer, teacher_tokenizer):
    """The vocabulary map (built once per tokenizer pair and cached on disk) and the token alignment."""
    from hf_dwakd.baselines.mined_alignment import MinEDAligner  # Numba: loaded by mined runs only

    return MinEDAligner(student_tokenizer, teacher_tokenizer, args.mined_cache_dir)


register_method(
    baseline_method(
        "mined",
        _kd_of_config,
        fields=("mined_top_k", "mined_cache_dir"),
        build_aligner=_build_aligner,
    )
)
