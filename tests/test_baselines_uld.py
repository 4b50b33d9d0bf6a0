"""ULD (Boizard et al. 2024): sorted-probability L1 on response positions paired in order, shorter side truncated."""

import math

import pytest
import torch

from hf_dwakd.baselines import uld_loss
from hf_dwakd.objective.outputs import IGNORE_INDEX

from testing_utils import logits_side

P = IGNORE_INDEX


def log_of(probabilities):
    return [[[math.log(p) for p in row] for row in example] for example in probabilities]


def sorted_l1(p, q):
    """Direct ULD distance between two probability lists of any lengths."""
    width = max(len(p), len(q))
    p = sorted(p, reverse=True) + [0.0] * (width - len(p))
    q = sorted(q, reverse=True) + [0.0] * (width - len(q))
    return sum(abs(a - b) for a, b in zip(p, q))


# Student: 3 response positions after 2 prompt positions (vocab 3). Teacher: 2 response positions, the first
# preceded by one prompt position and the sequence right-padded (vocab 2). Logits are log-probabilities.
STUDENT_PROBS = [[[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05]]]
STUDENT_LABELS = [[P, P, 0, 1, 2]]
TEACHER_PROBS = [[[0.5, 0.5], [0.7, 0.3], [0.25, 0.75], [0.5, 0.5]]]
TEACHER_LABELS = [[P, 1, 0, P]]


def test_hand_checked_case():
    student = logits_side(log_of(STUDENT_PROBS), STUDENT_LABELS)
    teacher = logits_side(log_of(TEACHER_PROBS), TEACHER_LABELS)
    kd, metrics = uld_loss(student, teacher)
    # Pairs: student positions 2, 3 with teacher positions 1, 2; student position 4 has no partner.
    expected_sum = sorted_l1([0.1, 0.1, 0.8], [0.7, 0.3]) + sorted_l1([0.3, 0.3, 0.4], [0.25, 0.75])
    assert expected_sum == pytest.approx(0.1 + 0.2 + 0.1 + 0.35 + 0.05 + 0.3)
    assert kd.item() == pytest.approx(expected_sum / 3, abs=1e-6)  # 3 student response tokens
    assert metrics["uld_paired_tokens"].item() == 2
    assert metrics["uld_distance"].item() == pytest.approx(expected_sum / 2, abs=1e-6)
    assert uld_loss(student, teacher, num_items_in_batch=10)[0].item() == pytest.approx(expected_sum / 10, abs=1e-6)


def test_batch_is_the_sum_of_its_examples():
    torch.manual_seed(0)
    student_logits, teacher_logits = torch.randn(2, 6, 7), torch.randn(2, 5, 4)
    student_labels = torch.tensor([[P, 1, 2, 3, 4, P], [P, P, P, 1, 2, 3]])
    teacher_labels = torch.tensor([[P, P, 1, 2, P], [P, 1, 2, 3, 0]])
    batch, _ = uld_loss(logits_side(student_logits, student_labels), logits_side(teacher_logits, teacher_labels), 1)
    singles = sum(
        uld_loss(
            logits_side(student_logits[b : b + 1], student_labels[b : b + 1]),
            logits_side(teacher_logits[b : b + 1], teacher_labels[b : b + 1]),
            1,
        )[0]
        for b in range(2)
    )
    assert batch.item() == pytest.approx(singles.item(), rel=1e-6)


def test_top_k_keeps_the_head_and_the_tail_mass():
    student = logits_side(log_of(STUDENT_PROBS), STUDENT_LABELS)
    teacher = logits_side(log_of(TEACHER_PROBS), TEACHER_LABELS)
    exact, _ = uld_loss(student, teacher)
    assert uld_loss(student, teacher, top_k=3)[0].item() == pytest.approx(exact.item(), abs=1e-6)
    # k = 1: |p_(1) - q_(1)| plus |tail_p - tail_q|.
    expected = (abs(0.8 - 0.7) + abs(0.2 - 0.3)) + (abs(0.4 - 0.75) + abs(0.6 - 0.25))
    top1, _ = uld_loss(student, teacher, top_k=1)
    assert top1.item() == pytest.approx(expected / 3, abs=1e-6)
    assert top1.item() <= exact.item() + 1e-7


def test_temperature_divides_the_logits():
    student_logits, teacher_logits = torch.randn(1, 5, 3), torch.randn(1, 4, 2)
    student, teacher = logits_side(student_logits, STUDENT_LABELS), logits_side(teacher_logits, TEACHER_LABELS)
    hot = uld_loss(student, teacher, temperature=2.0)
    halved = uld_loss(logits_side(student_logits / 2, STUDENT_LABELS), logits_side(teacher_logits / 2, TEACHER_LABELS))
    assert hot[0].item() == pytest.approx(halved[0].item(), abs=1e-6)


def test_padded_logit_columns_are_ignored():
    student_logits, teacher_logits = torch.randn(1, 5, 3), torch.randn(1, 4, 2)
    plain, _ = uld_loss(logits_side(student_logits, STUDENT_LABELS), logits_side(teacher_logits, TEACHER_LABELS))
    padded_student = torch.cat([student_logits, torch.full((1, 5, 2), 5.0)], dim=-1)
    padded, _ = uld_loss(
        logits_side(padded_student, STUDENT_LABELS, vocab_size=3), logits_side(teacher_logits, TEACHER_LABELS)
    )
    assert padded.item() == pytest.approx(plain.item(), abs=1e-6)


def test_gradient_reaches_the_paired_student_logits_only():
    student = logits_side(torch.randn(1, 5, 3), STUDENT_LABELS)
    teacher = logits_side(torch.randn(1, 4, 2), TEACHER_LABELS)
    kd, _ = uld_loss(student, teacher)
    kd.backward()
    per_position = student.logits.grad.abs().sum(dim=-1)[0]
    assert (per_position[2:4] > 0).all()
    assert per_position[[0, 1, 4]].eq(0).all()  # prompt positions and the unpaired last response position
    assert teacher.logits.grad is None and student.hidden.grad is None


def test_bad_input_is_refused():
    student = logits_side(torch.randn(1, 5, 3), STUDENT_LABELS)
    teacher = logits_side(torch.randn(1, 4, 2), TEACHER_LABELS)
    with pytest.raises(ValueError, match="top_k"):
        uld_loss(student, teacher, top_k=0)
    with pytest.raises(ValueError, match="teacher.vocab_size"):
        uld_loss(student, logits_side(torch.randn(1, 4, 2), TEACHER_LABELS, vocab_size=5))
    with pytest.raises(ValueError, match="num_items_in_batch"):
        uld_loss(student, teacher, 0)
    with pytest.raises(ValueError, match="same examples"):
        uld_loss(student, logits_side(torch.randn(2, 4, 2), TEACHER_LABELS * 2))
