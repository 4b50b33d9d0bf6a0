"""MinED (FuseLLM): vocabulary map and token alignment by minimum edit distance, then KL onto the student vocab."""

import math

import numpy as np
import pytest
import torch

from hf_dwakd.baselines import MinEDAligner, mined_loss, mined_vocab
from hf_dwakd.baselines.edit_distance import align_sequences, nearest_strings
from hf_dwakd.baselines.mined import project_teacher_logits
from hf_dwakd.baselines.token_text import token_texts
from hf_dwakd.objective.outputs import IGNORE_INDEX

from testing_utils import logits_side

P = IGNORE_INDEX


def levenshtein(a: bytes, b: bytes) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j - 1] + (x != y), previous[j] + 1, current[j - 1] + 1))
        previous = current
    return previous[-1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mined-cache")


@pytest.fixture(scope="module")
def aligner(student_tokenizer, teacher_tokenizer, cache_dir):
    return MinEDAligner(student_tokenizer, teacher_tokenizer, cache_dir=cache_dir)


# ---- edit-distance kernels ----------------------------------------------------------------------------------


def test_nearest_strings_finds_a_minimum_edit_distance():
    rng = np.random.default_rng(0)
    candidates = [bytes(rng.integers(97, 101, size=rng.integers(0, 7))) for _ in range(200)]
    queries = [bytes(rng.integers(97, 103, size=rng.integers(0, 9))) for _ in range(40)]
    found, distance = nearest_strings(queries, candidates)
    for query, index, d in zip(queries, found, distance):
        assert d == levenshtein(query, candidates[index])
        assert d == min(levenshtein(query, candidate) for candidate in candidates)


def test_align_sequences_follows_the_cheapest_monotone_path():
    count, partner = align_sequences([b"the", b"cat", b"s"], [b"the", b"cats"])
    assert count.tolist() == [1, 1, 1]
    assert partner.tolist() == [0, 1, 1]  # "cat" and "s" both face "cats"
    count, partner = align_sequences([b"abc"], [b"a", b"b", b"c"])
    assert count.tolist() == [3]


# ---- vocabulary map on the real fixture tokenizers ----------------------------------------------------------


def test_vocab_map_matches_equal_texts_and_roles(aligner, student_tokenizer, teacher_tokenizer):
    mapping = aligner.teacher_to_student
    assert mapping.shape == (len(teacher_tokenizer),)
    assert int(mapping.min()) >= 0 and int(mapping.max()) < len(student_tokenizer)

    def mapped(teacher_token):
        student_id = mapping[teacher_tokenizer.convert_tokens_to_ids(teacher_token)]
        return student_tokenizer.convert_ids_to_tokens(int(student_id))

    assert mapped("▁world") == "Ġworld"  # SentencePiece and byte-level spellings of " world"
    assert mapped("world") == "world"
    assert mapped("<0x0A>") == "Ċ"  # byte fallback newline -> byte-level newline
    assert mapped("</s>") == "<|endoftext|>"  # eos -> eos
    assert mapped("<unk>") == "<|endoftext|>"  # the student's unk is its eos


def test_token_texts_spell_the_text(student_tokenizer, teacher_tokenizer):
    text = "Hello world,\n  naïve 你好 ü €5"
    for tokenizer in (student_tokenizer, teacher_tokenizer):
        texts = token_texts(tokenizer).texts
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert b"".join(texts[i] for i in ids) in (text.encode(), b" " + text.encode())


def test_vocab_map_takes_a_nearest_token_when_no_text_matches(aligner, student_tokenizer, teacher_tokenizer):
    student = token_texts(student_tokenizer)
    teacher = token_texts(teacher_tokenizer)
    candidates = [text for i, text in enumerate(student.texts) if i not in student.special]
    assert len(candidates) == len(student.texts) - 1
    for teacher_token in ["▁Fußball", "netje", "▁жи"]:
        text = teacher.texts[teacher_tokenizer.convert_tokens_to_ids(teacher_token)]
        assert text not in student.texts
        chosen = student.texts[int(aligner.teacher_to_student[teacher_tokenizer.convert_tokens_to_ids(teacher_token)])]
        assert levenshtein(text, chosen) == min(levenshtein(text, candidate) for candidate in candidates)


def test_vocab_map_is_cached_on_disk(student_tokenizer, teacher_tokenizer, cache_dir, aligner, monkeypatch):
    key = mined_vocab.vocabulary_key(teacher_tokenizer, student_tokenizer)
    assert (cache_dir / f"{key}.npy").is_file()
    assert key != mined_vocab.vocabulary_key(student_tokenizer, teacher_tokenizer)

    def must_not_build(*args):
        raise AssertionError("the cached map should have been read")

    monkeypatch.setattr(mined_vocab, "build_vocab_map", must_not_build)
    again = MinEDAligner(student_tokenizer, teacher_tokenizer, cache_dir=cache_dir)
    assert torch.equal(again.teacher_to_student, aligner.teacher_to_student)


# ---- token alignment on the real fixture tokenizers ---------------------------------------------------------


def shifted_labels(tokenizer, pairs):
    """Next-token labels (SideOutputs coordinates) of prompt + response + eos, -100 on the prompt, right-padded."""
    rows = []
    for prompt, response in pairs:
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = tokenizer(prompt + response)["input_ids"] + [tokenizer.eos_token_id]
        assert ids[: len(prompt_ids)] == prompt_ids
        rows.append(([P] * len(prompt_ids) + ids[len(prompt_ids) :])[1:])
    width = max(len(row) for row in rows)
    return torch.tensor([row + [P] * (width - len(row)) for row in rows])


PAIRS = [
    ("Question: what colour is the sky?\nAnswer:", " The sky is blue, naïvely speaking."),
    ("Say hi.", " Hello there"),
]


def test_teacher_positions_pair_tokens_of_the_same_text(aligner, student_tokenizer, teacher_tokenizer):
    student_labels = shifted_labels(student_tokenizer, PAIRS)
    teacher_labels = shifted_labels(teacher_tokenizer, PAIRS)
    positions = aligner.teacher_positions(student_labels, teacher_labels)
    assert positions.shape == student_labels.shape
    assert positions[student_labels == P].eq(-1).all()
    student_texts, teacher_texts = token_texts(student_tokenizer).texts, token_texts(teacher_tokenizer).texts

    def token_pairs(row):
        pairs = []
        for i in (positions[row] >= 0).nonzero().flatten().tolist():
            j = int(positions[row, i])
            assert teacher_labels[row, j] != P
            pairs.append((student_labels[row, i].item(), teacher_labels[row, j].item()))
        return pairs

    for row in range(len(PAIRS)):
        for student_id, teacher_id in token_pairs(row):
            if student_id == student_tokenizer.eos_token_id:
                assert teacher_id == teacher_tokenizer.eos_token_id
            else:
                assert student_texts[student_id] == teacher_texts[teacher_id]
    aligned_words = {student_texts[s] for s, _ in token_pairs(0)}
    assert {b" The", b" sky", b" is", b" blue", b" speaking", b"."} <= aligned_words
    assert " naïve".encode() not in aligned_words  # one student token against several teacher tokens
    assert [student_texts[s] for s, _ in token_pairs(1)] == [b" Hello", b" there", b"<|endoftext|>"]


# ---- the loss on a hand-checkable case ----------------------------------------------------------------------


TEACHER_TO_STUDENT = torch.tensor([0, 0, 2, 1])  # teacher vocab 4 -> student vocab 3
TEACHER_LOGITS = [[[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 0.5, -1.0], [0.3, -0.2, 1.5, 0.0]]]
TEACHER_LABELS = [[P, 3, 1]]
STUDENT_LABELS = [[P, 1, 2, 0]]
POSITIONS = torch.tensor([[-1, 1, -1, 2]])  # student position 2 has no teacher partner


def kl(q, p):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(q, p) if a > 0)


def softmax(values):
    exps = [math.exp(v) if v != float("-inf") else 0.0 for v in values]
    return [e / sum(exps) for e in exps]


def test_hand_checked_case():
    student_logits = torch.tensor([[[0.0, 0.0, 0.0], [0.2, -0.4, 1.0], [0.5, 0.1, -0.3], [-1.0, 0.7, 0.2]]])
    student, teacher = logits_side(student_logits, STUDENT_LABELS), logits_side(TEACHER_LOGITS, TEACHER_LABELS)
    kd, metrics = mined_loss(student, teacher, teacher_positions=POSITIONS, teacher_to_student=TEACHER_TO_STUDENT)
    p = [softmax(row) for row in student_logits[0].tolist()]
    q1 = softmax([max(1.0, 2.0), -1.0, 0.5])  # student token 0 <- teacher tokens 0 and 1; 1 <- 3; 2 <- 2
    q3 = softmax([max(0.3, -0.2), 0.0, 1.5])
    expected = kl(q1, p[1]) + -math.log(p[2][2]) + kl(q3, p[3])  # position 2: the one-hot label 2
    assert kd.item() == pytest.approx(expected / 3, rel=1e-5)
    assert metrics["mined_aligned_fraction"].item() == pytest.approx(2 / 3)
    assert metrics["mined_kl"].item() == pytest.approx((kl(q1, p[1]) + kl(q3, p[3])) / 2, rel=1e-5)

    two, _ = mined_loss(
        student, teacher, 4, teacher_positions=POSITIONS, teacher_to_student=TEACHER_TO_STUDENT, temperature=2.0
    )
    p = [softmax([v / 2 for v in row]) for row in student_logits[0].tolist()]
    q1 = softmax([1.0, -0.5, 0.25])
    q3 = softmax([0.15, 0.0, 0.75])
    assert two.item() == pytest.approx((kl(q1, p[1]) - math.log(p[2][2]) + kl(q3, p[3])) / 4, rel=1e-5)


def test_top_k_carries_only_the_teachers_most_probable_tokens():
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.3, -0.2, 1.5, 0.0]])
    projected = project_teacher_logits(logits, TEACHER_TO_STUDENT, 3, top_k=2)
    inf = float("-inf")
    torch.testing.assert_close(projected, torch.tensor([[2.0, inf, inf], [0.3, inf, 1.5]]))
    everything = project_teacher_logits(logits, TEACHER_TO_STUDENT, 3, top_k=None)
    torch.testing.assert_close(everything, torch.tensor([[2.0, -1.0, 0.5], [0.3, 0.0, 1.5]]))
    student = logits_side(torch.randn(1, 4, 3), STUDENT_LABELS)
    kd, _ = mined_loss(
        student, logits_side(TEACHER_LOGITS, TEACHER_LABELS), 1,
        teacher_positions=POSITIONS, teacher_to_student=TEACHER_TO_STUDENT, top_k=2,
    )
    log_p = torch.log_softmax(student.logits.detach()[0], dim=-1)
    q3 = torch.softmax(torch.tensor([0.3, 1.5]), dim=0)
    expected = -log_p[1, 0] - log_p[2, 2] + (q3 * (q3.log() - log_p[3, [0, 2]])).sum()
    assert kd.item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_reaches_the_student_response_logits_only():
    student, teacher = logits_side(torch.randn(1, 4, 3), STUDENT_LABELS), logits_side(TEACHER_LOGITS, TEACHER_LABELS)
    kd, _ = mined_loss(student, teacher, teacher_positions=POSITIONS, teacher_to_student=TEACHER_TO_STUDENT)
    kd.backward()
    per_position = student.logits.grad.abs().sum(dim=-1)[0]
    assert per_position[0] == 0 and (per_position[1:] > 0).all()
    assert teacher.logits.grad is None and student.hidden.grad is None


def test_bad_alignment_input_is_refused():
    student, teacher = logits_side(torch.randn(1, 4, 3), STUDENT_LABELS), logits_side(TEACHER_LOGITS, TEACHER_LABELS)

    def run(positions=POSITIONS, mapping=TEACHER_TO_STUDENT):
        mined_loss(student, teacher, teacher_positions=positions, teacher_to_student=mapping)

    with pytest.raises(ValueError, match="teacher_positions is"):
        run(positions=POSITIONS[:, :3])
    with pytest.raises(ValueError, match="outside the student response"):
        run(positions=torch.tensor([[1, 1, -1, 2]]))
    with pytest.raises(ValueError, match="outside the teacher response"):
        run(positions=torch.tensor([[-1, 0, -1, 2]]))
    with pytest.raises(ValueError, match="teacher_to_student has shape"):
        run(mapping=TEACHER_TO_STUDENT[:3])
    with pytest.raises(ValueError, match="outside the student vocabulary"):
        run(mapping=torch.tensor([0, 0, 3, 1]))
