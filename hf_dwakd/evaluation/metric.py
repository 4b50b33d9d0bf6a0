"""ROUGE-L through the `evaluate` metric module shipped in `rouge/` (the Hub copy is out of reach offline)."""

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import evaluate

ROUGE_MODULE = Path(__file__).parent / "rouge"


@lru_cache(maxsize=1)
def load_rouge() -> "evaluate.EvaluationModule":
    """The packaged metric, kept in memory so that several processes never share a cache file."""
    import evaluate

    return evaluate.load(str(ROUGE_MODULE), keep_in_memory=True)


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """`(mean, per_example)` ROUGE-L F1 x 100, each example scored against its best reference."""
    result = load_rouge().compute(predictions=list(predictions), references=[list(refs) for refs in references])
    return result["rougeL"], result["rougeL_per_example"]
