"""`hf-dwakd evaluate` end to end on a tiny model: every output file, adapters, and bad input before generation."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from hf_dwakd.evaluation import runner
from hf_dwakd.evaluation.benchmarks import alpaca_prompt
from hf_dwakd.evaluation.command import build_parser, main
from hf_dwakd.evaluation.report import collect_results, markdown_table

from testing_utils import load_tokenizer, save_tiny_model, tiny_causal_lm, write_jsonl

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--max_length", "40", "--max_prompt_length", "32", "--batch_size", "2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    dolly = [
        {"instruction": f"Tell me fact {i}.", "prompt": alpaca_prompt(f"Tell me fact {i}."), "output": f"Fact {i}."}
        for i in range(6)
    ]
    write_jsonl(root / "dolly" / "dev.jsonl", dolly)
    write_jsonl(root / "self-inst" / "test.jsonl", [{"instruction": "Fix: he go", "input": "", "output": "He goes."}])
    write_jsonl(root / "vicuna" / "test.jsonl", [{"instruction": f"Why {i}?", "output": "Because."} for i in range(3)])
    write_jsonl(
        root / "sinst" / "test.jsonl",
        [{"instruction": "Title it.", "input": "A long text.", "output": ["A title", "Another title"]}] * 2,
    )
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-gpt2", "gpt2", family="gpt2")


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    path = tmp_path_factory.mktemp("adapters") / "tiny-llama-lora"
    base = tiny_causal_lm(load_tokenizer("llama2"), family="llama")
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", "llama2", family="llama")


def independent_rouge_l(prediction, references):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return 100 * max(scorer.score(reference, prediction)["rougeL"].fmeasure for reference in references)


def test_end_to_end_writes_every_output(model_dir, data_dir, tmp_path):
    output_dir = tmp_path / "out"
    argv = ["--model_name_or_path", str(model_dir), "--data_dir", str(data_dir), "--output_dir", str(output_dir)]
    argv += ["--seeds", "2"]
    results = main(argv + QUICK)

    model_out = output_dir / "tiny-gpt2"
    assert json.loads((model_out / "results.json").read_text()) == results
    assert results["seeds"] == [10, 20]
    assert results["decoding"] == {
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "max_length": 40,
        "max_prompt_length": 32,
        "max_new_tokens": 8,
    }
    expected_counts = {"dolly": 3, "self-inst": 1, "vicuna": 3, "sinst": 2}
    assert list(results["benchmarks"]) == list(expected_counts)
    for name, count in expected_counts.items():
        entry = results["benchmarks"][name]
        lines = [json.loads(line) for line in (model_out / "predictions" / f"{name}.jsonl").read_text().splitlines()]
        assert len(lines) == 2 * count and entry["num_examples"] == count
        for seed in (10, 20):
            rows = [row for row in lines if row["seed"] == seed]
            assert [row["index"] for row in rows] == list(range(count))
            scores = [independent_rouge_l(row["prediction"], row["references"]) for row in rows]
            assert [row["rougeL"] for row in rows] == pytest.approx(scores)
            assert entry["seeds"][str(seed)] == pytest.approx(sum(scores) / count)
        per_seed = list(entry["seeds"].values())
        mean = sum(per_seed) / 2
        assert entry["mean"] == pytest.approx(mean)
        assert entry["std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2)
    assert results["average"] == pytest.approx(sum(e["mean"] for e in results["benchmarks"].values()) / 4)
    dolly_prompts = [json.loads(line)["prompt"] for line in (model_out / "predictions" / "dolly.jsonl").open()]
    assert dolly_prompts[:3] == [alpaca_prompt(f"Tell me fact {i}.") for i in (3, 4, 5)]

    table = (output_dir / "results.md").read_text().splitlines()
    assert table[0] == "| Model | Dolly | Self-Inst | Vicuna | S-NI | Avg |"
    dolly = results["benchmarks"]["dolly"]
    assert table[2].startswith(f"| tiny-gpt2 | {dolly['mean']:.2f} ± {dolly['std']:.2f} | ")
    assert table[2].endswith(f" | {results['average']:.2f} |")
    assert json.loads((output_dir / "results.json").read_text()) == {"tiny-gpt2": results}


def test_adapter_run_adds_a_row_to_the_shared_table(llama_dir, adapter_dir, model_dir, data_dir, tmp_path):
    output_dir = tmp_path / "out"
    common = ["--data_dir", str(data_dir), "--output_dir", str(output_dir), "--seeds", "1", "--benchmarks", "vicuna"]
    main(["--model_name_or_path", str(model_dir)] + common + QUICK)
    results = main(["--model_name_or_path", str(llama_dir), "--adapter", str(adapter_dir)] + common + QUICK)
    assert results["name"] == "tiny-llama-lora" and results["adapter"] == str(adapter_dir)
    table = (output_dir / "results.md").read_text().splitlines()
    assert table[0] == "| Model | Vicuna | Avg |"
    assert [row.split(" | ")[0] for row in table[2:]] == ["| tiny-gpt2", "| tiny-llama-lora"]
    assert set(json.loads((output_dir / "results.json").read_text())) == {"tiny-gpt2", "tiny-llama-lora"}


@pytest.fixture
def generation_forbidden(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("generation started before the input was checked")

    monkeypatch.setattr(runner, "generate_responses", fail)


def test_bad_input_fails_before_generation(
    generation_forbidden, model_dir, llama_dir, adapter_dir, data_dir, tmp_path
):
    def run(*extra, model=model_dir):
        paths = ["--model_name_or_path", str(model), "--data_dir", str(data_dir), "--output_dir", str(tmp_path)]
        return main(paths + list(extra))

    with pytest.raises(ValueError, match="--benchmarks: unknown benchmark"):
        run("--benchmarks", "dolly,mmlu")
    with pytest.raises(FileNotFoundError, match="vicuna/test.jsonl does not exist"):
        main(
            [
                "--model_name_or_path",
                str(model_dir),
                "--data_dir",
                str(tmp_path),
                "--output_dir",
                str(tmp_path),
                "--benchmarks",
                "vicuna",
            ]
        )
    weights_only = tmp_path / "weights-only"
    tiny_causal_lm(load_tokenizer("gpt2"), family="gpt2").save_pretrained(weights_only)
    with pytest.raises(ValueError, match="no tokenizer could be loaded .*pass --tokenizer PATH"):
        run(model=weights_only)
    with pytest.raises(ValueError, match="--adapter .* does not fit --model"):
        run("--adapter", str(adapter_dir))  # a LoRA for q_proj/v_proj on a GPT-2 model
    wider = tmp_path / "wider-llama"
    tiny_causal_lm(load_tokenizer("llama2"), family="llama", hidden_size=48).save_pretrained(wider)
    with pytest.raises(ValueError, match="(?s)does not fit --model_name_or_path .*size mismatch"):
        run("--adapter", str(adapter_dir), "--tokenizer", str(llama_dir), model=wider)
    with pytest.raises(ValueError, match="no adapter_config.json"):
        run("--adapter", str(tmp_path))
    with pytest.raises(ValueError, match="--chat_template: the tokenizer has no chat template"):
        run("--chat_template")
    with pytest.raises(ValueError, match="--max_prompt_length"):
        run("--max_length", "64", "--max_prompt_length", "64")
    with pytest.raises(ValueError, match="--seeds must be at least 1"):
        run("--seeds", "0")
    write_jsonl(tmp_path / "empty" / "vicuna" / "test.jsonl", [])
    with pytest.raises(ValueError, match="benchmark 'vicuna': .*test.jsonl holds no examples"):
        main(
            [
                "--model_name_or_path",
                str(model_dir),
                "--data_dir",
                str(tmp_path / "empty"),
                "--output_dir",
                str(tmp_path),
                "--benchmarks",
                "vicuna",
            ]
        )
    assert not list(tmp_path.glob("*/results.json"))


def test_table_marks_missing_benchmarks_and_skips_foreign_json(tmp_path):
    full = {"mean": 20.0, "std": 1.0}
    write_jsonl(
        tmp_path / "a" / "results.json",
        [{"name": "a", "benchmarks": {"dolly": full, "vicuna": full}, "average": 20.0}],
    )
    write_jsonl(
        tmp_path / "b" / "results.json",
        [{"name": "b", "benchmarks": {"vicuna": {"mean": 9.5, "std": 0.25}}, "average": 9.5}],
    )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text('{"eval_loss": 1.0}')
    assert markdown_table(collect_results(tmp_path)) == (
        "| Model | Dolly | Vicuna | Avg |\n"
        "|---|---|---|---|\n"
        "| a | 20.00 ± 1.00 | 20.00 ± 1.00 | 20.00 |\n"
        "| b | – | 9.50 ± 0.25 | – |\n"
    )


def test_parser_attaches_to_a_cli_subcommand():
    import argparse

    root = argparse.ArgumentParser(prog="hf-dwakd")
    evaluate = root.add_subparsers(dest="command").add_parser("evaluate")
    assert build_parser(evaluate) is evaluate
    args = root.parse_args(["evaluate", "--model_name_or_path", "m", "--output_dir", "o"])
    assert (args.benchmarks, args.seeds, args.max_length, args.max_prompt_length) == (
        "dolly,self-inst,vicuna,sinst",
        5,
        512,
        256,
    )


def test_module_entry_point_shows_help(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["python -m hf_dwakd.evaluation", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("hf_dwakd.evaluation", run_name="__main__")
    assert exit_info.value.code == 0
    assert "--adapter" in capsys.readouterr().out


@pytest.mark.slow
def test_two_processes_split_the_prompts_and_gather_them_in_order(model_dir, data_dir, tmp_path):
    """`torchrun` with two CPU processes: all prompts come back in order; process 0's share is sampled as alone."""
    common = ["--model_name_or_path", str(model_dir), "--data_dir", str(data_dir)]
    common += ["--benchmarks", "vicuna", "--seeds", "1"]
    single = main(common + ["--output_dir", str(tmp_path / "single")] + QUICK)
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "hf_dwakd.evaluation"]
    completed = subprocess.run(
        command + common + ["--output_dir", str(tmp_path / "pair")] + QUICK,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environment,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.count("tiny-gpt2 vicuna: ROUGE-L") == 1

    def rows(root):
        return [json.loads(line) for line in (root / "tiny-gpt2" / "predictions" / "vicuna.jsonl").open()]

    pair, alone = rows(tmp_path / "pair"), rows(tmp_path / "single")
    assert [row["prompt"] for row in pair] == [row["prompt"] for row in alone]
    assert len(pair) == 3 and single["benchmarks"]["vicuna"]["num_examples"] == 3
    # Three prompts over two processes: process 0 gets prompts 0-1 as one batch, as the single run does.
    assert [row["prediction"] for row in pair[:2]] == [row["prediction"] for row in alone[:2]]
