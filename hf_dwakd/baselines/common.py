"""What the baselines share: their config fields, their `ce_weight * CE + kd_weight * KD` loss, their logit rows,
and the pairing of response positions by order.

A baseline's KD term has the signature `kd_term(args, student, teacher, num_items_in_batch, context)` and returns
`(kd, ce, metrics)`: `kd` and the student CE `ce` are sums over tokens divided by `num_items_in_batch`
(docs/method.md, Loss), the CE taken from the same student logit rows as the KD, so that each response row enters
the output layer once; `metrics` holds detached scalars for logging. `baseline_method` turns it into a registered
method.
"""

import torch
import torch.nn.functional as F

from hf_dwakd.objective.checks import loss_denominator
from hf_dwakd.objective.chunking import over_token_chunks
from hf_dwakd.objective.dual_space import student_cross_entropy
from hf_dwakd.objective.outputs import SideOutputs
from hf_dwakd.objective.responses import Responses, gather_responses
from hf_dwakd.registry import DistillationMethod

# The config fields every baseline with a teacher reads (`kd_chunk_size`: its CE and KD share the chunks).
BASELINE_FIELDS = ("ce_weight", "kd_weight", "kd_temperature", "kd_chunk_size")


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
        kd, ce, metrics = kd_term(args, student, teacher, num_items_in_batch, context)
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


def over_student_rows(student: SideOutputs, responses: Responses, fn, per_token=(), chunk_size=None):
    """`fn(logits, *per_token_chunk)` over chunks of the student's response tokens, `logits` the chunk's (n,
    V_model) rows: each row is computed once and serves both `fn`'s terms and the student CE, added as `ce`.

    `per_token` are (N, ...) tensors in the order of `responses`; `fn` returns a dict of (n, ...) tensors. With a
    `chunk_size`, each chunk runs under activation checkpointing (`over_token_chunks`)."""

    def chunk(batch_index, position_index, labels, *extras):
        logits = student.logits_at(batch_index, position_index)
        terms = fn(logits, *extras)
        terms["ce"] = F.cross_entropy(logits.float(), labels, reduction="none")
        return terms

    inputs = (responses.batch_index, responses.position_index, responses.token_labels(), *per_token)
    return over_token_chunks(chunk, inputs, (), chunk_size)


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
