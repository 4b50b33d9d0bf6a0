"""The four instruction-following benchmarks of the paper, read from DSKD-format jsonl or from the Hub.

Local layout under a data directory (as in the DSKD/MiniLLM repositories):

    dolly/dev.jsonl       1,000-example validation split (see "Dolly" below)
    dolly/test.jsonl      optional: the paper's 500-example test split, used whole when present
    dolly/train.jsonl     optional: the training file; Dolly prompts that also occur in it are left out
    self-inst/test.jsonl  Self-Instruct user-oriented (242)
    vicuna/test.jsonl     Vicuna questions (80)
    sinst/test.jsonl      Super-NaturalInstructions, responses of 11+ words (1,694)

Each line is a JSON object with `output` (a reference string or a list of them) and either `prompt` or
`instruction` (+ optional `input`), from which the prompt is built with the template of docs/method.md (Evaluation
protocol).

Dolly: without `dolly/test.jsonl`, `dolly` is the second half of `dolly/dev.jsonl` (lines
len//2+1 .. len, one-based) and model selection uses the first half (`dolly_selection_examples`), so nothing
evaluated is ever selected on. Either way every example whose prompt also occurs in `dolly/train.jsonl`
is left out.

With `from_hub` the files come from MiniLLM's Hub dataset repositories (`BENCHMARKS`) through
`datasets.load_dataset`; there `dolly` is the paper's 500-example test split.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_WITHOUT_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass(frozen=True)
class Example:
    """One prompt with its reference responses; `instruction`/`input` feed chat templates."""

    prompt: str
    references: tuple[str, ...]
    instruction: str = ""
    input: str = ""


@dataclass(frozen=True)
class BenchmarkSource:
    """Where a benchmark lives: a file under the data directory, and a Hub dataset repository file."""

    local_file: str
    hub_repo: str
    hub_file: str


@dataclass
class Benchmark:
    name: str
    examples: list[Example]
    source: str


BENCHMARKS = {
    "dolly": BenchmarkSource("dolly/dev.jsonl", "MiniLLM/dolly", "valid.jsonl"),
    "self-inst": BenchmarkSource("self-inst/test.jsonl", "MiniLLM/self-inst", "valid.jsonl"),
    "vicuna": BenchmarkSource("vicuna/test.jsonl", "MiniLLM/Vicuna", "valid.jsonl"),
    "sinst": BenchmarkSource("sinst/test.jsonl", "MiniLLM/sinst", "11_/valid.jsonl"),
}
DOLLY_TEST_FILE = "dolly/test.jsonl"
DOLLY_TRAIN_FILE = "dolly/train.jsonl"


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The prompt template of docs/method.md, Evaluation protocol ("### Input:" only when there is an input)."""
    if input_text:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
    return PROMPT_WITHOUT_INPUT.format(instruction=instruction)


def parse_benchmark_names(text: str) -> list[str]:
    """`"dolly,vicuna"` -> `["dolly", "vicuna"]`, rejecting names that are not benchmarks."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown or not names:
        raise ValueError(
            f"--benchmarks: unknown benchmark(s) {unknown or [text]}; choose from {', '.join(BENCHMARKS)}"
        )
    return names


def example_from_record(record: dict[str, Any], where: str) -> Example:
    """Build an `Example` from one DSKD-format record; `where` names it in errors."""
    if "output" not in record:
        raise ValueError(f"{where}: no `output` field (the reference response)")
    references = record["output"]
    if isinstance(references, str):
        references = [references]
    if not references or not all(isinstance(reference, str) for reference in references):
        raise ValueError(f"{where}: `output` must be a string or a non-empty list of strings")
    instruction = record.get("instruction") or ""
    input_text = record.get("input") or ""
    prompt = record.get("prompt")
    if prompt is None:
        if not instruction:
            raise ValueError(f"{where}: needs a `prompt` or an `instruction` field")
        prompt = alpaca_prompt(instruction, input_text)
    return Example(prompt=prompt, references=tuple(references), instruction=instruction, input=input_text)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a jsonl file, one per non-empty line."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
    return records


def examples_from_jsonl(path: str | os.PathLike) -> list[Example]:
    return [example_from_record(record, f"{path}:{number}") for number, record in enumerate(read_jsonl(path), 1)]


def load_records_with_datasets(path: str, data_file: str | None) -> list[dict[str, Any]]:
    """Records through `datasets.load_dataset` (a Hub repository id, or a builder such as "json")."""
    import datasets

    dataset = datasets.load_dataset(path, data_files=data_file, split="train")
    return [dict(record) for record in dataset]


def load_benchmark(name: str, data_dir: str | os.PathLike | None = None, from_hub: bool = False) -> Benchmark:
    """One benchmark's examples, from `data_dir` or (with `from_hub`) from its Hub repository.

    Raises before any model work when the file is missing or malformed.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    source = BENCHMARKS[name]
    if from_hub:
        records = load_records_with_datasets(source.hub_repo, source.hub_file)
        where = f"hf://datasets/{source.hub_repo}/{source.hub_file}"
        examples = [example_from_record(record, f"{where} record {i}") for i, record in enumerate(records)]
        if name == "dolly" and data_dir is not None:
            examples = _without_training_prompts(examples, Path(data_dir))
        return Benchmark(name, examples, where)
    if data_dir is None:
        raise ValueError("--data_dir is required unless --from_hub is given")
    data_dir = Path(data_dir)
    if name == "dolly":
        return _load_dolly(data_dir)
    path = _existing_file(data_dir, source.local_file, name)
    return Benchmark(name, examples_from_jsonl(path), str(path))


def dolly_selection_examples(data_dir: str | os.PathLike) -> list[Example]:
    """The half of `dolly/dev.jsonl` kept for model selection (the first half), training prompts left out."""
    data_dir = Path(data_dir)
    examples = examples_from_jsonl(_existing_file(data_dir, BENCHMARKS["dolly"].local_file, "dolly"))
    return _without_training_prompts(examples[: len(examples) // 2], data_dir)


def _load_dolly(data_dir):
    test_path = data_dir / DOLLY_TEST_FILE
    if test_path.is_file():
        examples, source = examples_from_jsonl(test_path), str(test_path)
    else:
        dev_path = _existing_file(data_dir, BENCHMARKS["dolly"].local_file, "dolly")
        dev = examples_from_jsonl(dev_path)
        examples = dev[len(dev) // 2 :]
        source = f"{dev_path} lines {len(dev) // 2 + 1}-{len(dev)}"
    return Benchmark("dolly", _without_training_prompts(examples, data_dir), source)


def _without_training_prompts(examples, data_dir):
    train_path = data_dir / DOLLY_TRAIN_FILE
    if not train_path.is_file():
        return examples
    seen_in_training = {example.prompt for example in examples_from_jsonl(train_path)}
    return [example for example in examples if example.prompt not in seen_in_training]


def _existing_file(data_dir, relative, name):
    path = data_dir / relative
    if not path.is_file():
        raise FileNotFoundError(f"benchmark {name!r}: {path} does not exist; put {relative} under --data_dir")
    return path
