"""SFT: the student's cross-entropy alone, without a teacher (docs/method.md, Baselines)."""

from hf_dwakd.baselines.common import student_ce
from hf_dwakd.registry import DistillationMethod, register_method


def _sft_loss(args, student, teacher, num_items_in_batch, context):
    ce = student_ce(student, num_items_in_batch, args.kd_chunk_size)
    return ce, {"ce": ce.detach()}


register_method(
    DistillationMethod(
        name="sft", loss=_sft_loss, fields=("kd_chunk_size",), needs_teacher=False, token_sum_metrics={"ce"}
    )
)
