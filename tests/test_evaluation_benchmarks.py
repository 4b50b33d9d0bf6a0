"""Benchmark loading: DSKD-format jsonl, the Dolly halves, the Hub loader path, bad input, the bundled fixture files
and, beside a working copy, the full shared files."""

import json

import pytest

from hf_dwakd.evaluation.benchmarks import (
    BENCHMARKS,
    BenchmarkSource,
    Example,
    alpaca_prompt,
    dolly_selection_examples,
    examples_from_jsonl,
    load_benchmark,
    load_records_with_datasets,
    parse_benchmark_names,
)

from testing_utils import DATA, SHARED_DATA, requires_shared_data, write_jsonl

# The two templates exactly as docs/method.md (Evaluation protocol) and ../shared/data/NOTICE.md state them.
WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}"
    "\n\n### Response:\n"
)
WITHOUT_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def dolly_record(number):
    instruction = f"Question number {number}?"
    return {
        "instruction": instruction,
        "prompt": alpaca_prompt(instruction),
        "input": "",
        "output": f"Answer {number}.",
    }


def test_prompt_template_matches_the_protocol():
    assert alpaca_prompt("Sum 2 and 3.") == WITHOUT_INPUT.format(instruction="Sum 2 and 3.")
    assert alpaca_prompt("Sum them.", "2, 3") == WITH_INPUT.format(instruction="Sum them.", input="2, 3")


def test_reads_string_and_list_outputs_and_builds_missing_prompts(tmp_path):
    write_jsonl(
        tmp_path / "self-inst" / "test.jsonl",
        [
            {"instruction": "Fix the grammar.", "input": "he go home", "output": "He goes home."},
            {"prompt": "Custom prompt\n", "output": "A string reference."},
        ],
    )
    write_jsonl(tmp_path / "sinst" / "test.jsonl", [{"prompt": "P\n", "output": ["first answer", "second answer"]}])
    self_inst = load_benchmark("self-inst", tmp_path)
    assert self_inst.examples == [
        Example(
            WITH_INPUT.format(instruction="Fix the grammar.", input="he go home"),
            ("He goes home.",),
            "Fix the grammar.",
            "he go home",
        ),
        Example("Custom prompt\n", ("A string reference.",)),
    ]
    assert self_inst.source == str(tmp_path / "self-inst" / "test.jsonl")
    assert load_benchmark("sinst", tmp_path).examples[0].references == ("first answer", "second answer")


def test_dolly_evaluates_second_half_selects_on_first_and_drops_training_prompts(tmp_path):
    dev = [dolly_record(number) for number in range(7)]
    write_jsonl(tmp_path / "dolly" / "dev.jsonl", dev)
    # Records 1 (selection half) and 5 (evaluation half) also occur in the training file.
    write_jsonl(tmp_path / "dolly" / "train.jsonl", [dolly_record(1), dolly_record(5), dolly_record(99)])
    evaluated = load_benchmark("dolly", tmp_path)
    assert [example.references[0] for example in evaluated.examples] == ["Answer 3.", "Answer 4.", "Answer 6."]
    assert evaluated.source.endswith("dev.jsonl lines 4-7")
    selected = dolly_selection_examples(tmp_path)
    assert [example.references[0] for example in selected] == ["Answer 0.", "Answer 2."]


def test_dolly_test_split_is_used_whole_when_present(tmp_path):
    write_jsonl(tmp_path / "dolly" / "dev.jsonl", [dolly_record(number) for number in range(4)])
    write_jsonl(tmp_path / "dolly" / "test.jsonl", [dolly_record(number) for number in range(10, 13)])
    write_jsonl(tmp_path / "dolly" / "train.jsonl", [dolly_record(11)])
    evaluated = load_benchmark("dolly", tmp_path)
    assert [example.references[0] for example in evaluated.examples] == ["Answer 10.", "Answer 12."]
    assert evaluated.source == str(tmp_path / "dolly" / "test.jsonl")


def test_hub_loader_reads_the_same_records_through_datasets(tmp_path):
    records = [
        {"prompt": "Q1\n", "instruction": "Q1", "input": "", "output": ["a", "b"]},
        {"prompt": "Q2\n", "instruction": "Q2", "input": "x", "output": ["c"]},
    ]
    path = tmp_path / "valid.jsonl"
    write_jsonl(path, records)
    assert load_records_with_datasets("json", str(path)) == records
    assert set(BENCHMARKS) == {"dolly", "self-inst", "vicuna", "sinst"}
    assert BENCHMARKS["sinst"].hub_repo == "MiniLLM/sinst" and BENCHMARKS["sinst"].hub_file == "11_/valid.jsonl"


def test_hub_branch_runs_through_datasets_on_a_local_json_file(tmp_path, monkeypatch):
    # The real entries name MiniLLM's Hub repositories; here the same code path reads a local file via "json".
    hub_copy = tmp_path / "hub" / "valid.jsonl"
    write_jsonl(hub_copy, [dolly_record(number) for number in range(3)])
    write_jsonl(tmp_path / "data" / "dolly" / "train.jsonl", [dolly_record(2)])
    monkeypatch.setitem(BENCHMARKS, "dolly", BenchmarkSource("dolly/dev.jsonl", "json", str(hub_copy)))
    benchmark = load_benchmark("dolly", tmp_path / "data", from_hub=True)
    assert [example.references[0] for example in benchmark.examples] == ["Answer 0.", "Answer 1."]
    assert benchmark.source == f"hf://datasets/json/{hub_copy}"


def test_unknown_benchmark_names_are_rejected():
    assert parse_benchmark_names(" dolly, sinst ") == ["dolly", "sinst"]
    with pytest.raises(ValueError, match="--benchmarks: unknown benchmark.*alpaca.*choose from dolly"):
        parse_benchmark_names("dolly,alpaca")
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu'"):
        load_benchmark("mmlu", ".")


def test_missing_file_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="vicuna/test.jsonl does not exist; put vicuna/test.jsonl under"):
        load_benchmark("vicuna", tmp_path)
    with pytest.raises(ValueError, match="--data_dir is required"):
        load_benchmark("vicuna", None)


def test_malformed_records_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    for text, message in (
        ('{"prompt": "a", "output": "b"}\n{"prompt": "c"}\n', "bad.jsonl:2: no `output` field"),
        ('{"prompt": "a", "output": "b"}\n{not json\n', "bad.jsonl:2: not valid JSON"),
        ('{"output": "b"}\n', "needs a `prompt` or an `instruction`"),
        ('{"prompt": "a", "output": []}\n', "non-empty list of strings"),
    ):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            examples_from_jsonl(path)


def read_lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_benchmark_files(data_dir):
    """Load every benchmark of `data_dir` and check it against the files read here directly; return the examples
    per benchmark, the Dolly selection half, and the indices of the dev lines whose prompt is a training prompt."""
    loaded = {name: load_benchmark(name, data_dir).examples for name in BENCHMARKS}
    for name in ("self-inst", "vicuna", "sinst"):
        records = read_lines(data_dir / BENCHMARKS[name].local_file)
        assert [example.prompt for example in loaded[name]] == [record["prompt"] for record in records]
        expected = [tuple(r["output"]) if isinstance(r["output"], list) else (r["output"],) for r in records]
        assert [example.references for example in loaded[name]] == expected
    assert all(isinstance(record["output"], list) for record in read_lines(data_dir / "sinst" / "test.jsonl"))
    assert max(len(example.references) for example in loaded["sinst"]) > 1

    # Dolly: the second half of dev is evaluated, the first half selects; training prompts leave both.
    dev = read_lines(data_dir / "dolly" / "dev.jsonl")
    train_prompts = {record["prompt"] for record in read_lines(data_dir / "dolly" / "train.jsonl")}
    overlapping = [index for index, record in enumerate(dev) if record["prompt"] in train_prompts]
    half = len(dev) // 2
    selected = dolly_selection_examples(data_dir)
    assert [example.prompt for example in loaded["dolly"]] == [
        record["prompt"] for record in dev[half:] if record["prompt"] not in train_prompts
    ]
    assert [example.prompt for example in selected] == [
        record["prompt"] for record in dev[:half] if record["prompt"] not in train_prompts
    ]
    assert [example.references for example in loaded["dolly"]] == [
        (record["output"],) for record in dev[half:] if record["prompt"] not in train_prompts
    ]

    for examples in [*loaded.values(), selected]:
        for example in examples:
            assert example.prompt == alpaca_prompt(example.instruction, example.input)
    return loaded, selected, overlapping


def test_benchmark_fixture_files_load_like_the_full_sets():
    loaded, selected, overlapping = check_benchmark_files(DATA)
    assert {name: len(examples) for name, examples in loaded.items()} == {
        "dolly": 2, "self-inst": 6, "vicuna": 3, "sinst": 4
    }
    # Two training prompts in each dev half (one of them on two lines), as fixtures/data/NOTICE.md says.
    assert overlapping == [2, 3, 6, 7] and len(selected) == 2
    assert {example.input == "" for example in loaded["self-inst"]} == {True, False}


@requires_shared_data
def test_shared_benchmark_files_load_with_the_stated_counts():
    loaded, selected, overlapping = check_benchmark_files(SHARED_DATA)
    assert len(loaded["self-inst"]) == 242
    assert len(loaded["vicuna"]) == 80
    assert len(loaded["sinst"]) == 1694
    assert {len(example.references) for example in loaded["sinst"]} <= set(range(1, 21))
    # Dolly: 1,000 dev lines, halves of 500; the 10 prompts shared with the training prefix sit on 12 dev
    # lines (two are repeated).
    dev = read_lines(SHARED_DATA / "dolly" / "dev.jsonl")
    assert len(dev) == 1000 and len({dev[index]["prompt"] for index in overlapping}) == 10
    assert len(loaded["dolly"]) == 500 - sum(index >= 500 for index in overlapping) == 496
    assert len(selected) == 500 - sum(index < 500 for index in overlapping) == 492
