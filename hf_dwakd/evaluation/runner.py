"""Score one model on one benchmark: sample a response per prompt for each seed, ROUGE-L per seed."""

import math
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .benchmarks import Benchmark
from .generation import GenerationSettings, encode_prompts, generate_responses, render_prompts
from .metric import rouge_l


def default_seeds(count: int) -> list[int]:
    """The DSKD evaluation seeds 10, 20, ..., 10 * count."""
    if count < 1:
        raise ValueError(f"--seeds must be at least 1, got {count}")
    return [10 * (index + 1) for index in range(count)]


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((value - mean) ** 2 for value in values) / len(values))


@dataclass
class BenchmarkResult:
    name: str
    source: str
    num_examples: int
    seed_scores: dict = field(default_factory=dict)
    predictions: list = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        mean, std = mean_and_std(list(self.seed_scores.values()))
        return {
            "mean": mean,
            "std": std,
            "seeds": {str(seed): score for seed, score in self.seed_scores.items()},
            "num_examples": self.num_examples,
            "source": self.source,
        }


def prompt_ids_for(
    benchmark: Benchmark,
    tokenizer: PreTrainedTokenizerBase,
    settings: GenerationSettings,
    chat_template: bool = False,
) -> list[list[int]]:
    """The benchmark's prompts as token ids, ready for `evaluate_benchmark`."""
    texts = render_prompts(benchmark.examples, tokenizer, chat_template)
    return encode_prompts(texts, tokenizer, settings.max_prompt_length, chat_template)


def evaluate_benchmark(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    benchmark: Benchmark,
    prompt_ids: list[list[int]],
    seeds: list[int],
    settings: GenerationSettings,
) -> BenchmarkResult:
    """ROUGE-L for every seed, plus one prediction record per (seed, example)."""
    references = [example.references for example in benchmark.examples]
    result = BenchmarkResult(benchmark.name, benchmark.source, len(benchmark.examples))
    for seed in seeds:
        description = f"{benchmark.name} (seed {seed})"
        responses = generate_responses(model, tokenizer, prompt_ids, seed, settings, description)
        result.seed_scores[seed], per_example = rouge_l(responses, references)
        for index, (example, response, score) in enumerate(
            zip(benchmark.examples, responses, per_example, strict=True)
        ):
            result.predictions.append(
                {
                    "benchmark": benchmark.name,
                    "seed": seed,
                    "index": index,
                    "prompt": example.prompt,
                    "prediction": response,
                    "references": list(example.references),
                    "rougeL": score,
                }
            )
    return result
