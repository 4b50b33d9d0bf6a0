"""DSKD-CMA (Zhang et al. 2024): the objective's cross-model attention, unweighted dual-space KD with the
accuracy mask on the student space, the projector CE, no Soft-DTW."""

import math

import pytest
import torch

from hf_dwakd.baselines import dskd_loss
from hf_dwakd.objective import SideOutputs, cross_model_attention, gather_responses
from hf_dwakd.projectors import DWAKDProjectors

P = -100
STUDENT_RESPONSES = [[1, 2, 3, 5], [3, 4]]  # example 0 has a hole at position 4
TEACHER_RESPONSES = [[2, 3, 4], [1, 2, 3]]
LENGTH, STUDENT_VOCAB, TEACHER_VOCAB, STUDENT_HIDDEN, TEACHER_HIDDEN = 6, 7, 5, 4, 6


def make_side(responses, vocab_size, hidden, seed):
    generator = torch.Generator().manual_seed(seed)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator).requires_grad_(True)

    labels = torch.full((len(responses), LENGTH), P)
    for b, positions in enumerate(responses):
        labels[b, positions] = torch.randint(0, vocab_size, (len(positions),), generator=generator)
    return SideOutputs(
        logits=leaf(len(responses), LENGTH, vocab_size),
        hidden=leaf(len(responses), LENGTH, hidden),
        input_embeds=leaf(len(responses), LENGTH, hidden),
        target_embeds=leaf(len(responses), LENGTH, hidden),
        labels=labels,
        lm_head_weight=leaf(vocab_size, hidden),
        vocab_size=vocab_size,
    )


@pytest.fixture
def inputs():
    """Student labels set so that the projected teacher is right at some positions and wrong at the others
    (the attention depends on the label mask, not on the label values)."""
    student = make_side(STUDENT_RESPONSES, STUDENT_VOCAB, STUDENT_HIDDEN, seed=0)
    teacher = make_side(TEACHER_RESPONSES, TEACHER_VOCAB, TEACHER_HIDDEN, seed=1)
    torch.manual_seed(2)
    projectors = DWAKDProjectors(STUDENT_HIDDEN, TEACHER_HIDDEN)
    attention = cross_model_attention(gather_responses(student), gather_responses(teacher), projectors)
    for b, positions in enumerate(STUDENT_RESPONSES):
        for k, i in enumerate(positions):
            best = int((attention.t2s_hidden[b, k] @ student.lm_head_weight.T).argmax())
            student.labels[b, i] = best if k % 2 == 0 else (best + 1) % STUDENT_VOCAB
    return student, teacher, projectors


def log_softmax(logits, temperature=1.0):
    return torch.log_softmax(logits.detach().double() / temperature, dim=-1)


def kl(log_p, log_q):
    return float((log_p.exp() * (log_p - log_q)).sum())


def direct_terms(student, teacher, projectors, student_divergence):
    """The three DSKD sums, token by token in float64, from the attention's h_t2s and h_s2t."""
    attention = cross_model_attention(gather_responses(student), gather_responses(teacher), projectors)
    ce_t2s = kd_student = kd_teacher = 0.0
    for b, positions in enumerate(STUDENT_RESPONSES):
        for k, i in enumerate(positions):
            z_t2s = attention.t2s_hidden[b, k] @ student.lm_head_weight.T
            label = int(student.labels[b, i])
            ce_t2s -= float(log_softmax(z_t2s)[label])
            if int(z_t2s.argmax()) == label:
                log_t2s, log_s = log_softmax(z_t2s, 2.0), log_softmax(student.logits[b, i], 2.0)
                kd_student += kl(log_t2s, log_s) if student_divergence == "forward_kl" else kl(log_s, log_t2s)
    for b, positions in enumerate(TEACHER_RESPONSES):
        for k, j in enumerate(positions):
            z_s2t = attention.s2t_hidden[b, k] @ teacher.lm_head_weight.T
            kd_teacher += kl(log_softmax(teacher.logits[b, j], 2.0), log_softmax(z_s2t, 2.0))
    return ce_t2s, kd_student, kd_teacher


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
def test_matches_a_direct_computation(inputs, divergence):
    student, teacher, projectors = inputs
    kd, metrics = dskd_loss(student, teacher, projectors=projectors, divergence=divergence)
    ce_t2s, kd_student, kd_teacher = direct_terms(student, teacher, projectors, divergence)
    tokens = 6  # student response tokens
    assert metrics["ce_t2s"].item() == pytest.approx(ce_t2s / tokens, rel=1e-5)
    assert metrics["kd_student"].item() == pytest.approx(kd_student / tokens, rel=1e-5)
    assert metrics["kd_teacher"].item() == pytest.approx(kd_teacher / tokens, rel=1e-5)
    assert kd.item() == pytest.approx((ce_t2s + kd_student + kd_teacher) / tokens, rel=1e-5)
    assert metrics["t2s_acc"].item() == pytest.approx(3 / 6)  # k = 0, 2 of example 0 and k = 0 of example 1
    over_twelve, _ = dskd_loss(student, teacher, 12, projectors=projectors, divergence=divergence)
    assert math.isclose(over_twelve.item() * 2, kd.item(), rel_tol=1e-5)


def test_student_logits_learn_only_where_the_projected_teacher_is_right(inputs):
    student, teacher, projectors = inputs
    kd, _ = dskd_loss(student, teacher, projectors=projectors)
    kd.backward()
    per_position = student.logits.grad.abs().sum(dim=-1)
    learning = torch.zeros(2, LENGTH, dtype=torch.bool)
    for b, positions in enumerate(STUDENT_RESPONSES):
        learning[b, positions[::2]] = True  # the positions labelled with the projected teacher's argmax
    assert (per_position[learning] > 0).all() and per_position[~learning].eq(0).all()
    assert student.hidden.grad.abs().sum() > 0  # through s2t
    for name in ("query", "t2s", "s2t"):
        assert getattr(projectors, name).weight.grad.abs().sum() > 0
    assert projectors.embed_t2s.weight.grad is None  # no Soft-DTW
    assert student.lm_head_weight.grad is None
    assert all(getattr(teacher, field).grad is None for field in ("logits", "hidden", "target_embeds"))


def test_bad_options_are_refused(inputs):
    student, teacher, projectors = inputs
    with pytest.raises(ValueError, match="divergence"):
        dskd_loss(student, teacher, projectors=projectors, divergence="kl")
    with pytest.raises(ValueError, match="temperature"):
        dskd_loss(student, teacher, projectors=projectors, temperature=0.0)
    with pytest.raises(ValueError, match=r"build DWAKDProjectors\(4, 6\)"):
        dskd_loss(student, teacher, projectors=DWAKDProjectors(4, 8))
