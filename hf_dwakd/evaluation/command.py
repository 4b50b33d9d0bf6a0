"""`hf-dwakd evaluate`: ROUGE-L of one model on the instruction benchmarks, over several seeds.

    hf-dwakd evaluate --model_name_or_path PATH [--adapter PATH] --benchmarks dolly,self-inst,vicuna,sinst \\
        --data_dir DIR --seeds 5 --output_dir DIR [--max_examples N] [--update_model_card]

Run it under `accelerate launch` to split the prompts across processes. Every input is checked (benchmark
files, tokenizer, model, adapter, chat template) before the first token is generated.
"""

import argparse
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from .benchmarks import BENCHMARKS, load_benchmark, parse_benchmark_names
from .generation import TEMPERATURE, TOP_K, TOP_P, GenerationSettings
from .loading import DTYPES, load_model, load_tokenizer
from .report import model_results, write_card_scores, write_model_outputs, write_summary
from .runner import default_seeds, evaluate_benchmark, prompt_ids_for

METRIC_DESCRIPTION = "ROUGE-L F1 x 100 (rouge_score, Porter stemmer), max over references, mean over examples"


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The `evaluate` arguments, added to `parser` (e.g. a CLI sub-command parser) or to a new one."""
    if parser is None:
        parser = argparse.ArgumentParser(prog="hf-dwakd evaluate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model_name_or_path", required=True, help="model directory or Hub id (full or merged weights)"
    )
    parser.add_argument("--adapter", help="PEFT adapter directory to apply on top of --model_name_or_path")
    parser.add_argument("--tokenizer", help="tokenizer directory or Hub id (default: --model_name_or_path)")
    parser.add_argument("--name", help="row name in the results table (default: the adapter's or model's folder)")
    parser.add_argument(
        "--benchmarks", default=",".join(BENCHMARKS), help=f"comma-separated subset of {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--data_dir", help="folder with dolly/dev.jsonl, self-inst/test.jsonl, ... (DSKD format)")
    parser.add_argument("--from_hub", action="store_true", help="read the benchmarks from their Hub repositories")
    parser.add_argument("--seeds", type=int, default=5, help="number of sampling seeds: 10, 20, ... (default 5)")
    parser.add_argument("--output_dir", required=True, help="where results and predictions are written")
    parser.add_argument("--max_examples", type=int, help="evaluate only the first N examples of each benchmark")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=512, help="prompt + response tokens (default 512)")
    parser.add_argument("--max_prompt_length", type=int, default=256, help="prompt tokens kept (default 256)")
    parser.add_argument("--chat_template", action="store_true", help="wrap each instruction in the chat template")
    parser.add_argument("--dtype", choices=list(DTYPES), default="auto")
    parser.add_argument(
        "--update_model_card",
        action="store_true",
        help="write the scores into the model card (README.md) of the evaluated folder (--adapter's, else "
        "--model_name_or_path's): model-index metadata and a table; `push_to_hub` then uploads them",
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as `args` say; returns this model's results record."""
    settings = GenerationSettings(args.max_length, args.max_prompt_length, args.batch_size)
    seeds = default_seeds(args.seeds)
    if args.max_examples is not None and args.max_examples < 1:
        raise ValueError(f"--max_examples must be at least 1, got {args.max_examples}")
    names = parse_benchmark_names(args.benchmarks)
    card_folder = args.adapter or args.model_name_or_path
    if args.update_model_card and not Path(card_folder).is_dir():
        raise ValueError(
            f"--update_model_card writes into the evaluated folder's README.md, but {card_folder} is not a local "
            "folder: evaluate a local copy of the model, or drop --update_model_card."
        )
    benchmarks = [load_benchmark(name, args.data_dir, args.from_hub) for name in names]
    for benchmark in benchmarks:
        benchmark.examples = benchmark.examples[: args.max_examples]
        if not benchmark.examples:
            raise ValueError(f"benchmark {benchmark.name!r}: {benchmark.source} holds no examples")
    tokenizer = load_tokenizer(args.tokenizer or args.model_name_or_path, args.model_name_or_path)
    prompt_ids = [prompt_ids_for(benchmark, tokenizer, settings, args.chat_template) for benchmark in benchmarks]
    accelerator = Accelerator()  # reads the `accelerate launch` settings, e.g. --cpu
    model = load_model(args.model_name_or_path, args.adapter, args.dtype).to(accelerator.device)

    benchmark_results = [
        evaluate_benchmark(model, tokenizer, benchmark, ids, seeds, settings)
        for benchmark, ids in zip(benchmarks, prompt_ids, strict=True)
    ]
    name = args.name or Path(args.adapter or args.model_name_or_path).name
    results = model_results(name, _settings_record(args, settings, seeds), benchmark_results)
    if accelerator.is_main_process:
        write_model_outputs(Path(args.output_dir) / name, results, benchmark_results)
        write_summary(args.output_dir)
        if args.update_model_card:
            print(f"Scores written into {write_card_scores(card_folder, results)}.")
        for result in benchmark_results:
            summary = result.summary()
            print(f"{name} {result.name}: ROUGE-L {summary['mean']:.2f} ± {summary['std']:.2f}")
    return results


def _settings_record(args, settings, seeds):
    return {
        "model": args.model_name_or_path,
        "adapter": args.adapter,
        "tokenizer": args.tokenizer or args.model_name_or_path,
        "chat_template": args.chat_template,
        "dtype": args.dtype,
        "max_examples": args.max_examples,
        "seeds": seeds,
        "decoding": {
            "temperature": TEMPERATURE,
            "top_p": TOP_P,
            "top_k": TOP_K,
            "max_length": settings.max_length,
            "max_prompt_length": settings.max_prompt_length,
            "max_new_tokens": settings.max_new_tokens,
        },
        "metric": METRIC_DESCRIPTION,
    }
