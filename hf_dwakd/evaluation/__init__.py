"""Instruction-benchmark evaluation (docs/method.md, Evaluation protocol): ROUGE-L on Dolly, Self-Instruct, Vicuna
and S-NI."""

from .benchmarks import BENCHMARKS, Benchmark, Example, alpaca_prompt, dolly_selection_examples, load_benchmark
from .callback import RougeEvalCallback
from .generation import GenerationSettings, generate_responses
from .metric import load_rouge, rouge_l
from .runner import evaluate_benchmark

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "Example",
    "GenerationSettings",
    "RougeEvalCallback",
    "alpaca_prompt",
    "dolly_selection_examples",
    "evaluate_benchmark",
    "generate_responses",
    "load_benchmark",
    "load_rouge",
    "rouge_l",
]
