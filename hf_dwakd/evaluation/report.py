"""Write evaluation outputs: per-model results and predictions, and the paper-style table over all models.

Layout under an output directory:

    <name>/results.json                 this model's scores per benchmark (mean, std, each seed) and settings
    <name>/predictions/<benchmark>.jsonl one line per (seed, example)
    results.json                        every model's results.json, keyed by name
    results.md                          rows: models; columns: benchmarks + Avg

and, with `--update_model_card`, the scores in the evaluated model folder's `README.md` (`write_card_scores`).
"""

import json
import os
from pathlib import Path
from typing import Any

from ..model_card import BenchmarkScore, write_scores
from .benchmarks import BENCHMARKS
from .runner import BenchmarkResult

COLUMN_TITLES = {"dolly": "Dolly", "self-inst": "Self-Inst", "vicuna": "Vicuna", "sinst": "S-NI"}


def model_results(
    name: str, settings_record: dict[str, Any], benchmark_results: list[BenchmarkResult]
) -> dict[str, Any]:
    """The JSON record of one model: its settings, each benchmark's summary, and the average of the means."""
    benchmarks = {result.name: result.summary() for result in benchmark_results}
    average = sum(entry["mean"] for entry in benchmarks.values()) / len(benchmarks)
    return {"name": name, **settings_record, "benchmarks": benchmarks, "average": average}


def write_model_outputs(
    model_dir: str | os.PathLike, results: dict[str, Any], benchmark_results: list[BenchmarkResult]
) -> None:
    """`results.json` and `predictions/<benchmark>.jsonl` for one model."""
    model_dir = Path(model_dir)
    (model_dir / "predictions").mkdir(parents=True, exist_ok=True)
    (model_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    for result in benchmark_results:
        with open(model_dir / "predictions" / f"{result.name}.jsonl", "w", encoding="utf-8") as handle:
            for record in result.predictions:
                handle.write(json.dumps(record) + "\n")


def collect_results(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every model's `<name>/results.json` under `output_dir`, sorted by name (other JSON files are skipped)."""
    paths = sorted(Path(output_dir).glob("*/results.json"))
    records = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
    return [record for record in records if isinstance(record, dict) and "benchmarks" in record]


def markdown_table(all_results: list[dict[str, Any]]) -> str:
    """Rows: models; columns: the benchmarks any model has (in the paper's order) + Avg, as `mean ± std`.

    Avg is the mean of the row's benchmark means, shown only when the row has every column.
    """
    columns = [name for name in BENCHMARKS if any(name in results["benchmarks"] for results in all_results)]
    lines = [
        "| Model | " + " | ".join(COLUMN_TITLES[name] for name in columns) + " | Avg |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for results in all_results:
        scores = results["benchmarks"]
        cells = [
            f"{scores[name]['mean']:.2f} ± {scores[name]['std']:.2f}" if name in scores else "–" for name in columns
        ]
        average = f"{results['average']:.2f}" if all(name in scores for name in columns) else "–"
        lines.append(f"| {results['name']} | " + " | ".join(cells) + f" | {average} |")
    return "\n".join(lines) + "\n"


def write_summary(output_dir: str | os.PathLike) -> None:
    """Rebuild `results.md` and `results.json` at the top of `output_dir` from every model evaluated there."""
    all_results = collect_results(output_dir)
    output_dir = Path(output_dir)
    (output_dir / "results.md").write_text(markdown_table(all_results), encoding="utf-8")
    combined = {results["name"]: results for results in all_results}
    (output_dir / "results.json").write_text(json.dumps(combined, indent=2) + "\n", encoding="utf-8")


def write_card_scores(model_dir: str | os.PathLike, results: dict[str, Any]) -> Path:
    """One model's results (`model_results`) into the model card of `model_dir`; returns the card's path."""
    scores = [
        BenchmarkScore(
            title=COLUMN_TITLES[name],
            dataset_id=BENCHMARKS[name].hub_repo,
            mean=summary["mean"],
            std=summary["std"],
            seeds=len(summary["seeds"]),
            examples=summary["num_examples"],
        )
        for name, summary in results["benchmarks"].items()
    ]
    decoding = results["decoding"]
    protocol = (
        f"`hf-dwakd evaluate`: {results['metric']}, of responses sampled at temperature {decoding['temperature']}, "
        f"top-p {decoding['top_p']}, top-k {decoding['top_k']} (prompts cut to {decoding['max_prompt_length']} "
        f"tokens, up to {decoding['max_new_tokens']} new tokens); mean ± standard deviation over the sampling seeds "
        f"{', '.join(str(seed) for seed in results['seeds'])}."
    )
    return write_scores(model_dir, results["name"], scores, protocol)
