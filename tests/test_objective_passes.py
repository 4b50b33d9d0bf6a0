"""The objective's shared vocabulary-wide passes: reused log-softmaxes, the conditional floor, one student gather."""

import math

import pytest
import torch

from hf_dwakd.objective import DWAKDLossOptions, cross_model_attention, gather_responses
from hf_dwakd.objective.divergences import DIVERGENCES, LOG_FLOOR, divergence, floored
from hf_dwakd.objective.dual_space import predicts, student_cross_entropy, student_space
from hf_dwakd.objective.responses import gather_rows
from hf_dwakd.objective.weights import entropy, max_probability, vocabulary_log_probs

from testing_utils import make_inputs


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_a_reused_log_softmax_gives_the_same_divergence_at_temperature_one(name):
    logits = (3 * torch.randn(4, 30)).requires_grad_(True)
    target = 3 * torch.randn(4, 30)
    plain = divergence(name, logits, target, 1.0)
    (plain_grad,) = torch.autograd.grad(plain.sum(), logits)
    reused = divergence(
        name,
        logits,
        target,
        1.0,
        unscaled=torch.log_softmax(logits, dim=-1),
        target_unscaled=torch.log_softmax(target, dim=-1),
    )
    (reused_grad,) = torch.autograd.grad(reused.sum(), logits)
    assert torch.equal(reused, plain)
    assert torch.allclose(reused_grad, plain_grad, rtol=1e-6, atol=1e-8)


def test_the_temperature_one_log_softmax_is_ignored_at_another_temperature():
    logits, target = torch.randn(4, 30), torch.randn(4, 30)
    unrelated = torch.zeros(4, 30)
    assert torch.equal(
        divergence("forward_kl", logits, target, 2.0, unscaled=unrelated, target_unscaled=unrelated),
        divergence("forward_kl", logits, target, 2.0),
    )


def test_the_floor_clamps_only_where_a_log_probability_lies_below_it():
    ordinary = torch.log_softmax(torch.randn(3, 20), dim=-1)
    assert floored(ordinary) is ordinary
    extreme = ordinary.clone()
    extreme[0, 0], extreme[1, 1] = -float("inf"), 2 * LOG_FLOOR
    assert torch.equal(floored(extreme), extreme.clamp(min=LOG_FLOOR))
    empty = torch.zeros(0, 20)
    assert floored(empty) is empty


def _reference_entropy_and_max(row):
    p = torch.softmax(row.double(), dim=0)
    return -sum(float(x) * math.log(float(x)) for x in p if x > 0), float(p.max())


@pytest.mark.parametrize("width, vocab_size", [(12, 12), (15, 12)], ids=["unpadded", "padded"])
def test_entropy_and_gate_over_the_vocabulary_columns(width, vocab_size):
    logits = 3 * torch.randn(5, width)
    logits[0, 3] = -float("inf")  # a probability of exactly 0
    all_columns = torch.log_softmax(logits, dim=-1)
    log_p = vocabulary_log_probs(logits, all_columns, vocab_size)
    assert log_p.shape == (5, vocab_size)
    values, maxima = entropy(log_p), max_probability(log_p)
    assert torch.isfinite(values).all()
    for row, value, maximum in zip(logits, values, maxima):
        expected_entropy, expected_max = _reference_entropy_and_max(row[:vocab_size])
        assert value.item() == pytest.approx(expected_entropy, rel=1e-5)
        assert maximum.item() == pytest.approx(expected_max, rel=1e-5)
    assert torch.equal(vocabulary_log_probs(logits, None, vocab_size), log_p)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_the_student_cross_entropy_comes_from_the_student_space_pass(chunk_size):
    student, teacher, projectors = make_inputs(seed=12)
    options = DWAKDLossOptions(kd_chunk_size=chunk_size)
    student_responses, teacher_responses = gather_responses(student), gather_responses(teacher)
    attention = cross_model_attention(student_responses, teacher_responses, projectors)
    t2s_hidden = attention.t2s_hidden[student_responses.valid]

    shared = student_space(student, student_responses, t2s_hidden, options, with_cross_entropy=True)
    separate = student_space(student, student_responses, t2s_hidden, options)
    separate_ce = student_cross_entropy(student, student_responses, chunk_size)
    assert set(shared) == set(separate) | {"ce"}
    assert torch.equal(shared["ce"], separate_ce)
    for name in separate:
        assert torch.equal(shared[name], separate[name]), name

    (shared_grad,) = torch.autograd.grad((shared["ce"] + shared["kd"]).sum(), student.logits)
    (separate_grad,) = torch.autograd.grad((separate_ce + separate["kd"]).sum(), student.logits)
    assert torch.allclose(shared_grad, separate_grad, rtol=1e-6, atol=1e-8)


def _gathers_of(leaf, output):
    """How many nodes of `output`'s graph read `leaf` directly (each fills a gradient of the leaf's size)."""
    count, seen, stack = 0, set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        parents = [parent for parent, _ in node.next_functions]
        count += any(getattr(parent, "variable", None) is leaf for parent in parents)
        stack.extend(parents)
    return count


def test_the_student_logits_are_gathered_once_for_the_cross_entropy_and_the_kd():
    student, teacher, projectors = make_inputs(seed=13)
    student_responses, teacher_responses = gather_responses(student), gather_responses(teacher)
    attention = cross_model_attention(student_responses, teacher_responses, projectors)
    terms = student_space(
        student, student_responses, attention.t2s_hidden[student_responses.valid], DWAKDLossOptions(), True
    )
    assert _gathers_of(student.logits, (terms["ce"] + terms["kd"]).sum()) == 1
    separate_ce = student_cross_entropy(student, student_responses, None)
    assert _gathers_of(student.logits, (separate_ce + terms["kd"]).sum()) == 2


def test_gather_rows_matches_indexing_in_value_and_gradient():
    values = torch.randn(3, 6, 5, requires_grad=True)
    batch_index, position_index = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([1, 4, 0, 2, 3])
    upstream = torch.randn(5, 5)
    rows = gather_rows(values[:, 1:], batch_index, position_index)  # a non-contiguous view, like the shifted logits
    (grad,) = torch.autograd.grad(rows, values, upstream)
    expected_rows = values[:, 1:][batch_index, position_index]
    (expected_grad,) = torch.autograd.grad(expected_rows, values, upstream)
    assert torch.equal(rows, expected_rows) and torch.equal(grad, expected_grad)


def test_predicts_is_argmax_including_its_first_maximum_on_ties():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 1.0, 5.0, 5.0]])
    for labels in (torch.tensor([1, 0, 2]), torch.tensor([2, 3, 3])):
        assert torch.equal(predicts(logits, labels), logits.argmax(dim=-1) == labels)
