"""MultiLevelOT (Cui et al. 2025): token-level absolute/logarithmic costs on holistically sorted top-k
probabilities, and a Sinkhorn cost between the two responses as point clouds."""

import math

import numpy as np
import pytest
import torch

from hf_dwakd.baselines import multilevel_ot_loss
from hf_dwakd.baselines.multilevel_ot import sinkhorn_plan
from hf_dwakd.objective.outputs import IGNORE_INDEX

from testing_utils import logits_side

P = IGNORE_INDEX
OPTIONS = dict(
    top_k=3, temperature=1.5, log_weight=0.1, sinkhorn_weight=0.1, sinkhorn_epsilon=0.1, sinkhorn_iterations=20
)


def direct_sum(student_logits, student_labels, teacher_logits, teacher_labels, top_k, temperature, log_weight,
               sinkhorn_weight, sinkhorn_epsilon, sinkhorn_iterations):
    """The three terms of one example written out with numpy, Sinkhorn in the plain (non-log) domain."""

    def head(logits, labels):
        rows = np.asarray(logits, dtype=np.float64)[np.asarray(labels) != P]
        scaled = rows / (rows.std(axis=1, ddof=1, keepdims=True) + 1e-4) / temperature
        probs = np.exp(scaled) / np.exp(scaled).sum(axis=1, keepdims=True)
        columns = np.argsort(-probs.sum(axis=0))[:top_k]
        return probs[:, columns]

    s, t = head(student_logits, student_labels), head(teacher_logits, teacher_labels)
    r = min(len(s), len(t))
    absolute = np.abs(t[:r] - s[:r]).sum()
    logarithmic = -(t[:r] * np.log(s[:r])).sum()
    cost = np.abs(s[:, None, :] - t[None, :, :]).sum(axis=2)
    kernel = np.exp(-cost / sinkhorn_epsilon)
    u, v = np.ones(len(s)), np.ones(len(t))
    for _ in range(sinkhorn_iterations):
        u = (1 / len(s)) / (kernel @ v)
        v = (1 / len(t)) / (kernel.T @ u)
    plan = u[:, None] * kernel * v[None, :]
    sequence = len(s) * (plan * cost).sum()
    return absolute + log_weight * logarithmic + sinkhorn_weight * sequence


STUDENT_LABELS = [[P, 1, 2, 3, 4, P]]
TEACHER_LABELS = [[P, P, 1, 2, 0]]


def test_matches_a_direct_computation():
    torch.manual_seed(0)
    student_logits, teacher_logits = 2 * torch.randn(1, 6, 6), 2 * torch.randn(1, 5, 5)
    student, teacher = logits_side(student_logits, STUDENT_LABELS), logits_side(teacher_logits, TEACHER_LABELS)
    kd, metrics = multilevel_ot_loss(student, teacher, **OPTIONS)
    expected = direct_sum(student_logits[0], STUDENT_LABELS[0], teacher_logits[0], TEACHER_LABELS[0], **OPTIONS)
    assert kd.item() == pytest.approx(expected / 4, rel=1e-4)  # 4 student response tokens
    terms = metrics["multilevel_ot_absolute"] + 0.1 * metrics["multilevel_ot_logarithmic"]
    assert (terms + 0.1 * metrics["multilevel_ot_sequence"]).item() == pytest.approx(kd.item(), rel=1e-5)


def test_batch_is_the_sum_of_its_examples():
    torch.manual_seed(1)
    student_logits, teacher_logits = torch.randn(2, 6, 7), torch.randn(2, 5, 6)
    student_labels = torch.tensor([[P, 1, 2, 3, 4, P], [P, P, P, 1, 2, 3]])
    teacher_labels = torch.tensor([[P, P, 1, 2, P], [P, 1, 2, 3, 0]])
    batch, _ = multilevel_ot_loss(
        logits_side(student_logits, student_labels), logits_side(teacher_logits, teacher_labels), 1, **OPTIONS
    )
    expected = sum(
        direct_sum(student_logits[b], student_labels[b], teacher_logits[b], teacher_labels[b], **OPTIONS)
        for b in range(2)
    )
    assert batch.item() == pytest.approx(expected, rel=1e-4)


def test_sinkhorn_plan_has_uniform_marginals_on_the_valid_positions():
    torch.manual_seed(2)
    cost = torch.rand(2, 4, 5)
    rows = torch.tensor([[True, True, True, False], [True, True, True, True]])
    columns = torch.tensor([[True, True, False, False, False], [True, True, True, True, True]])
    plan = sinkhorn_plan(cost, rows, columns, epsilon=0.5, iterations=200)
    torch.testing.assert_close(plan.sum(dim=2), torch.tensor([[1 / 3] * 3 + [0], [1 / 4] * 4]))
    torch.testing.assert_close(plan.sum(dim=1), torch.tensor([[1 / 2] * 2 + [0] * 3, [1 / 5] * 5]))


def test_an_example_without_teacher_response_adds_nothing():
    torch.manual_seed(3)
    student_logits, teacher_logits = torch.randn(2, 6, 7), torch.randn(2, 5, 6)
    student_labels = torch.tensor([[P, 1, 2, 3, 4, P], [P, P, P, 1, 2, 3]])
    teacher_labels = torch.tensor([[P, P, 1, 2, P], [P, P, P, P, P]])
    student, teacher = logits_side(student_logits, student_labels), logits_side(teacher_logits, teacher_labels)
    kd, _ = multilevel_ot_loss(student, teacher, 1, **OPTIONS)
    first = direct_sum(student_logits[0], student_labels[0], teacher_logits[0], teacher_labels[0], **OPTIONS)
    assert kd.item() == pytest.approx(first, rel=1e-4)


def test_gradient_reaches_the_student_response_logits_only():
    student = logits_side(torch.randn(1, 6, 6), STUDENT_LABELS)
    teacher = logits_side(torch.randn(1, 5, 5), TEACHER_LABELS)
    kd, _ = multilevel_ot_loss(student, teacher, **OPTIONS)
    kd.backward()
    per_position = student.logits.grad.abs().sum(dim=-1)[0]
    assert per_position[[0, 5]].eq(0).all() and (per_position[1:5] > 0).all()
    assert math.isfinite(kd.item())
    assert teacher.logits.grad is None and student.hidden.grad is None


def test_bad_options_are_refused():
    student = logits_side(torch.randn(1, 6, 6), STUDENT_LABELS)
    teacher = logits_side(torch.randn(1, 5, 5), TEACHER_LABELS)
    with pytest.raises(ValueError, match="top_k"):
        multilevel_ot_loss(student, teacher, top_k=0)
    with pytest.raises(ValueError, match="sinkhorn_epsilon"):
        multilevel_ot_loss(student, teacher, sinkhorn_epsilon=0.0)
