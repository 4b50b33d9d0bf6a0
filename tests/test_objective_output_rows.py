"""Logits computed only at the rows a loss reads (`SideOutputs.output_layer`) against the full (B, L, V) logits,
and the memory that chunking keeps for the backward."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from hf_dwakd import DWAKDConfig
from hf_dwakd.methods import distillation_loss
from hf_dwakd.objective import DWAKDLossOptions, SideOutputs, dwakd_loss
from hf_dwakd.projectors import DWAKDProjectors

LENGTH = 12
# Ragged: examples of different response lengths, one with a hole, the teacher's longer or shorter.
STUDENT_RESPONSES = [range(3, 11), [1, 2, 4, 5], range(8, 11)]
TEACHER_RESPONSES = [range(2, 9), range(4, 11), range(9, 11)]
STUDENT = dict(vocab_size=50, width=56, hidden=8)  # a padded output layer: 56 logit columns, 50 tokens
TEACHER = dict(vocab_size=40, width=40, hidden=12)


def make_side(positions, vocab_size, width, hidden, seed, trainable):
    """A side whose logits come from `output_layer` on `hidden`; returns it and the output layer."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(positions)
    labels = torch.full((batch, LENGTH), -100)
    for b, rows in enumerate(positions):
        rows = list(rows)
        labels[b, rows] = torch.randint(0, vocab_size, (len(rows),), generator=generator)
    layer = torch.nn.Linear(hidden, width, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(width, hidden, generator=generator))
    layer.requires_grad_(trainable)
    side = SideOutputs(
        hidden=torch.randn(batch, LENGTH, hidden, generator=generator).requires_grad_(trainable),
        input_embeds=torch.randn(batch, LENGTH, hidden, generator=generator),
        target_embeds=torch.randn(batch, LENGTH, hidden, generator=generator),
        labels=labels,
        lm_head_weight=layer.weight.detach(),
        vocab_size=vocab_size,
        output_layer=layer,
    )
    return side, layer


def with_full_logits(side: SideOutputs) -> SideOutputs:
    """The same side as today's trainer built it: the output layer applied at every position."""
    return dataclasses.replace(side, logits=side.output_layer(side.hidden), output_layer=None)


def first_common_positions(student_labels, teacher_labels):
    """A stand-in for `MinEDAligner.teacher_positions`: the k-th student response position faces the teacher's."""
    positions = torch.full_like(student_labels, -1)
    for b in range(student_labels.shape[0]):
        student_rows = (student_labels[b] != -100).nonzero().flatten()
        teacher_rows = (teacher_labels[b] != -100).nonzero().flatten()
        common = min(len(student_rows), len(teacher_rows))
        positions[b, student_rows[:common]] = teacher_rows[:common]
    return positions


METHODS = [
    ("sft", None),
    ("sft", 5),
    ("dwakd", None),
    ("dwakd", 5),
    ("dskd", None),
    ("dskd", 5),
    ("uld", None),
    ("uld", 5),
    ("mined", None),
    ("mined", 5),
    ("multilevel_ot", None),
    ("multilevel_ot", 5),
]


def method_setup(tmp_path, method, chunk_size):
    """The method's config, projectors and (MinED) aligner for the sides `make_side` builds."""
    options = dict(uld_top_k=None) if method == "uld" else dict(ot_top_k=8) if method == "multilevel_ot" else {}
    if chunk_size is not None:
        options["kd_chunk_size"] = chunk_size
    args = DWAKDConfig(output_dir=str(tmp_path), kd_method=method, use_cpu=True, report_to="none", **options)
    torch.manual_seed(2)
    projectors = DWAKDProjectors(STUDENT["hidden"], TEACHER["hidden"])
    generator = torch.Generator().manual_seed(3)
    aligner = SimpleNamespace(
        teacher_positions=first_common_positions,
        teacher_to_student=torch.randint(0, STUDENT["vocab_size"], (TEACHER["vocab_size"],), generator=generator),
    )
    return args, projectors, aligner


@pytest.mark.parametrize("method, chunk_size", METHODS)
def test_rows_from_the_output_layer_give_the_full_logits_loss_and_gradients(tmp_path, method, chunk_size):
    student, student_layer = make_side(STUDENT_RESPONSES, **STUDENT, seed=0, trainable=True)
    teacher, _ = make_side(TEACHER_RESPONSES, **TEACHER, seed=1, trainable=False)
    args, projectors, aligner = method_setup(tmp_path, method, chunk_size)
    trained = [student.hidden, student_layer.weight, *projectors.parameters()]

    def loss_and_gradients(student_side, teacher_side):
        loss, metrics = distillation_loss(
            args, student_side, teacher_side, None, projectors=projectors, aligner=aligner
        )
        gradients = torch.autograd.grad(loss, trained, allow_unused=True)
        return loss, metrics, gradients

    full_loss, full_metrics, full_gradients = loss_and_gradients(with_full_logits(student), with_full_logits(teacher))
    rows_loss, rows_metrics, rows_gradients = loss_and_gradients(student, teacher)
    torch.testing.assert_close(rows_loss, full_loss, rtol=1e-5, atol=0)
    assert rows_metrics.keys() == full_metrics.keys()
    for name in full_metrics:
        torch.testing.assert_close(rows_metrics[name].float(), full_metrics[name].float(), rtol=1e-5, atol=1e-7)
    assert full_gradients[0] is not None and full_gradients[1] is not None
    for full, rows in zip(full_gradients, rows_gradients):
        if full is None:
            assert rows is None
        else:
            scale = full.abs().max()
            assert (rows - full).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("method", ["sft", "dwakd", "dskd", "uld", "mined", "multilevel_ot"])
def test_each_response_row_enters_the_students_output_layer_once(tmp_path, method):
    """The CE and the KD term share one application of the output layer to the student's response rows."""
    student, student_layer = make_side(STUDENT_RESPONSES, **STUDENT, seed=0, trainable=True)
    teacher, teacher_layer = make_side(TEACHER_RESPONSES, **TEACHER, seed=1, trainable=False)
    rows = {"student": 0, "teacher": 0}

    def counting(layer, role):
        def apply(hidden_rows):
            rows[role] += hidden_rows.shape[0]
            return layer(hidden_rows)

        return apply

    student = dataclasses.replace(student, output_layer=counting(student_layer, "student"))
    teacher = dataclasses.replace(teacher, output_layer=counting(teacher_layer, "teacher"))
    args, projectors, aligner = method_setup(tmp_path, method, None)
    loss, _ = distillation_loss(args, student, teacher, None, projectors=projectors, aligner=aligner)
    loss.backward()
    assert rows["student"] == int(student.response_mask.sum())
    assert rows["teacher"] <= int(teacher.response_mask.sum())


@pytest.mark.parametrize("method", ["uld", "mined", "multilevel_ot"])
def test_kd_chunk_size_bounds_the_baselines_ce_and_kd_alike(tmp_path, method):
    """The baselines whose student CE reads `kd_chunk_size` accept it, and chunks change no value."""
    student, student_layer = make_side(STUDENT_RESPONSES, **STUDENT, seed=0, trainable=True)
    teacher, _ = make_side(TEACHER_RESPONSES, **TEACHER, seed=1, trainable=False)
    results = []
    for chunk_size in (None, 3):
        args, projectors, aligner = method_setup(tmp_path, method, chunk_size)
        loss, metrics = distillation_loss(args, student, teacher, None, projectors=projectors, aligner=aligner)
        results.append((loss, metrics, torch.autograd.grad(loss, [student.hidden, student_layer.weight])))
    (loss, metrics, gradients), (chunked_loss, chunked_metrics, chunked_gradients) = results
    torch.testing.assert_close(chunked_loss, loss, rtol=1e-5, atol=0)
    for name in metrics:
        torch.testing.assert_close(chunked_metrics[name].float(), metrics[name].float(), rtol=1e-5, atol=1e-7)
    for chunked, whole in zip(chunked_gradients, gradients):
        assert (chunked - whole).abs().max() <= 1e-5 * whole.abs().max()


def test_logits_at_reads_the_requested_rows_only():
    side, layer = make_side(STUDENT_RESPONSES, **STUDENT, seed=4, trainable=True)
    calls = []
    side = dataclasses.replace(side, output_layer=lambda rows: calls.append(rows.shape[0]) or layer(rows))
    batch_index, position_index = torch.tensor([0, 2, 1]), torch.tensor([5, 9, 2])
    rows = side.logits_at(batch_index, position_index)
    assert calls == [3]
    torch.testing.assert_close(rows, layer(side.hidden)[batch_index, position_index])
    with pytest.raises(ValueError, match="neither `logits` nor `output_layer`"):
        dwakd_loss(
            dataclasses.replace(side, output_layer=None),
            make_side(TEACHER_RESPONSES, **TEACHER, seed=5, trainable=False)[0],
            DWAKDProjectors(STUDENT["hidden"], TEACHER["hidden"]),
            DWAKDLossOptions(),
        )


def largest_and_total_saved_bytes(loss_fn, existing):
    """The largest tensor autograd saves for the backward while `loss_fn` runs, and the total, in bytes; tensors
    sharing storage with `existing` ones (the inputs, the weights: no new memory) are not counted.

    Activation checkpointing stacks its own hooks inside each checkpointed chunk: what it recomputes in the
    backward instead of keeping is not counted, which is the point.
    """
    existing = {tensor.untyped_storage().data_ptr() for tensor in existing}
    sizes = [0]

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in existing:
            sizes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_fn()
    return max(sizes), sum(sizes)


def saved_bytes_of_dwakd(student_width, chunk_size, ce_weight):
    student, student_layer = make_side(
        STUDENT_RESPONSES, vocab_size=student_width, width=student_width, hidden=8, seed=6, trainable=True
    )
    teacher, teacher_layer = make_side(
        TEACHER_RESPONSES, vocab_size=2000, width=2000, hidden=12, seed=7, trainable=False
    )
    torch.manual_seed(8)
    projectors = DWAKDProjectors(8, 12)
    options = DWAKDLossOptions(kd_chunk_size=chunk_size, ce_weight=ce_weight)
    existing = [
        *(getattr(side, name) for side in (student, teacher) for name in ("hidden", "input_embeds", "target_embeds")),
        student_layer.weight,
        teacher_layer.weight,
        *projectors.parameters(),
    ]
    return largest_and_total_saved_bytes(lambda: dwakd_loss(student, teacher, projectors, options), existing)


@pytest.mark.parametrize("ce_weight", [0.0, 1.0])
def test_chunked_loss_keeps_no_vocabulary_wide_tensor_for_the_backward(ce_weight):
    small_largest, small_total = saved_bytes_of_dwakd(1000, chunk_size=4, ce_weight=ce_weight)
    large_largest, large_total = saved_bytes_of_dwakd(8000, chunk_size=4, ce_weight=ce_weight)
    # Eight times the vocabulary, the same bytes kept: nothing kept for the backward grows with V.
    assert (large_largest, large_total) == (small_largest, small_total)
    assert large_largest < 4 * 1000  # far below one (token x vocabulary) float32 row of either size
    # Unchunked, the (tokens x vocabulary) rows are kept, growing with V.
    unchunked_largest, unchunked_total = saved_bytes_of_dwakd(8000, chunk_size=None, ce_weight=ce_weight)
    response_tokens = sum(len(list(rows)) for rows in STUDENT_RESPONSES)
    assert unchunked_largest >= 4 * 8000 * response_tokens
    assert unchunked_total > 10 * large_total
