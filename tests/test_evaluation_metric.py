"""The packaged `evaluate` ROUGE module against `rouge_score` and against hand-counted LCS scores."""

from pathlib import Path

import evaluate
import pytest
from rouge_score import rouge_scorer

from hf_dwakd.evaluation.metric import ROUGE_MODULE, rouge_l

PAIRS = [
    ("the cat sat on the mat", ["the cat is on the mat"]),
    ("The Cat, sat ON the mat!", ["the cat is on the mat"]),
    ("He was running to the stores quickly", ["he runs to the store", "quickly he ran"]),
    ("", ["an empty prediction scores zero"]),
    ("1. Paris\n2. Rome\n3. Berlin", ["Paris, Rome and Berlin are capitals.", "Berlin"]),
    ("completely unrelated words here", ["nothing in common at all"]),
    ("naïve café résumé", ["naive cafe resume"]),
]


def reference_rouge_l(prediction, references):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return 100 * max(scorer.score(reference, prediction)["rougeL"].fmeasure for reference in references)


@pytest.fixture(scope="module")
def rouge_module():
    return evaluate.load(str(ROUGE_MODULE), keep_in_memory=True)


def test_module_ships_inside_the_package():
    assert ROUGE_MODULE == Path(__file__).resolve().parents[1] / "hf_dwakd" / "evaluation" / "rouge"
    assert (ROUGE_MODULE / "rouge.py").is_file()


def test_module_equals_rouge_score_on_fixed_pairs(rouge_module):
    predictions = [prediction for prediction, _ in PAIRS]
    references = [refs for _, refs in PAIRS]
    result = rouge_module.compute(predictions=predictions, references=references)
    expected = [reference_rouge_l(prediction, refs) for prediction, refs in PAIRS]
    assert result["rougeL_per_example"] == pytest.approx(expected, abs=1e-9)
    assert result["rougeL"] == pytest.approx(sum(expected) / len(expected), abs=1e-9)
    assert 0 < result["rougeL"] < 100


def test_hand_counted_lcs_scores(rouge_module):
    # LCS "the cat on the mat" = 5 of 6 tokens each side: P = R = F = 5/6.
    single = rouge_module.compute(predictions=["the cat sat on the mat"], references=["the cat is on the mat"])
    assert single["rougeL"] == pytest.approx(100 * 5 / 6)
    # Lower-casing, punctuation and the Porter stemmer: "Dogs running!" ~ "dog run" exactly.
    stemmed = rouge_module.compute(predictions=["Dogs running!"], references=[["dog run"]])
    assert stemmed["rougeL"] == pytest.approx(100.0)
    # The best of several references counts: "a b c d" vs "a x" (P 1/4, R 1/2, F 1/3) and "a b" (F 2/3).
    best = rouge_module.compute(predictions=["a b c d"], references=[["a x", "a b"]])
    assert best["rougeL"] == pytest.approx(100 * 2 / 3)


def test_rouge_l_helper_matches_module_and_accepts_tuples():
    mean, per_example = rouge_l(["the cat sat on the mat", "Berlin"], [("the cat is on the mat",), ("x", "Berlin")])
    assert per_example == pytest.approx([100 * 5 / 6, 100.0])
    assert mean == pytest.approx((100 * 5 / 6 + 100) / 2)


def test_empty_reference_list_is_an_error(rouge_module):
    with pytest.raises(ValueError, match="references\\[0\\] is empty"):
        rouge_module.compute(predictions=["x"], references=[[]])
