"""ROUGE-L F1 x 100 as the instruction-following distillation papers report it (MiniLLM, DSKD, DWA-KD).

A local `evaluate` metric module: load it with `evaluate.load(<this folder>)`. Each prediction is scored
against each of its references with Google's `rouge_score` (its default tokenizer: lower-case, runs of
letters and digits, Porter stemmer) and keeps the best; the result is the mean over predictions.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = """\
ROUGE-L F-measure (longest common subsequence) x 100, maximum over the references of each prediction, mean over
predictions; the score used by MiniLLM, DSKD and DWA-KD for Dolly, Self-Instruct, Vicuna and S-NI.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of reference texts, or list of lists of references (one list per prediction).
    use_stemmer: apply the Porter stemmer before matching (default True, as in the papers).
Returns:
    rougeL: mean over predictions of the best ROUGE-L F1 x 100.
    rougeL_per_example: that best score for each prediction, in input order.
Example:
    >>> rouge = evaluate.load("hf_dwakd/evaluation/rouge")
    >>> rouge.compute(predictions=["the cat sat on the mat"], references=[["the cat is on the mat"]])["rougeL"]
    83.33333333333334
"""

_CITATION = """\
@inproceedings{lin-2004-rouge,
    title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
    author = "Lin, Chin-Yew",
    booktitle = "Text Summarization Branches Out",
    year = "2004",
    pages = "74--81",
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
        )

    def _compute(self, predictions, references, use_stemmer=True):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
        per_example = []
        for index, (prediction, example_references) in enumerate(zip(predictions, references, strict=True)):
            if isinstance(example_references, str):
                example_references = [example_references]
            if not example_references:
                raise ValueError(f"references[{index}] is empty: every prediction needs at least one reference")
            best = max(
                scorer.score(target=reference, prediction=prediction)["rougeL"].fmeasure
                for reference in example_references
            )
            per_example.append(100.0 * best)
        mean = sum(per_example) / len(per_example) if per_example else 0.0
        return {"rougeL": mean, "rougeL_per_example": per_example}
