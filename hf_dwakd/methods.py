"""The loss of each `kd_method` (docs/method.md, Baselines) on the two models' `SideOutputs`, as the registry
declares it.

`dwakd` is the full objective of `objective/`; the baselines of `baselines/` train `ce_weight * CE + kd_weight *
KD`; `sft` is the student cross-entropy alone. Every term is a token sum divided by `num_items_in_batch`
(docs/method.md, Loss). See `registry.py` to add a method.
"""

from hf_dwakd.registry import LossContext, get_method


def distillation_loss(args, student, teacher, num_items_in_batch, *, projectors=None, aligner=None, step=0):
    """`(loss, metrics)` of `args.kd_method`; `projectors` for the methods that train them, `aligner` for those
    that build one (mined), `step` the optimizer step (for annealed knobs)."""
    context = LossContext(projectors=projectors, aligner=aligner, step=step)
    return get_method(args.kd_method).loss(args, student, teacher, num_items_in_batch, context)
