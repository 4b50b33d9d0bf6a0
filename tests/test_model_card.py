"""Scores on the model card: `hf-dwakd evaluate --update_model_card` writes them as the Hub reads them, a second
evaluation updates them, the trainer's own card keeps them, and `push_to_hub` uploads them with the student only."""

import os
import shutil

import pytest
from datasets import Dataset
from huggingface_hub import ModelCard, metadata_load
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from hf_dwakd import DWAKDTrainer
from hf_dwakd.evaluation import runner
from hf_dwakd.evaluation.benchmarks import BENCHMARKS, alpaca_prompt
from hf_dwakd.evaluation.command import main as evaluate
from hf_dwakd.model_card import SCORES_BEGIN
from hf_dwakd.teacher_cache import build_teacher_cache

from testing_utils import (
    ROWS,
    UPLOADED_FILES,
    make_config,
    record_hub_uploads,
    save_tiny_model,
    shared_tokenizers,
    write_jsonl,
)

QUICK = ["--max_length", "40", "--max_prompt_length", "32", "--batch_size", "2", "--max_examples", "2"]
TITLES = {"dolly": "Dolly", "self-inst": "Self-Inst", "vicuna": "Vicuna"}
RESPONSES = {10: "Fact 1, he goes.", 20: "Fact 2, because."}  # one response per sampling seed, for every prompt


@pytest.fixture(autouse=True)
def scripted_responses(monkeypatch):
    """Responses fixed per seed instead of sampled from a random model: quick, and scores that differ by seed and
    benchmark (a random tiny model scores 0 everywhere)."""
    monkeypatch.setattr(
        runner, "generate_responses", lambda model, tokenizer, ids, seed, *_: [RESPONSES[seed]] * len(ids)
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    dolly = [{"prompt": alpaca_prompt(f"Tell me fact {i}."), "output": f"Fact {i}."} for i in range(4)]
    write_jsonl(root / "dolly" / "dev.jsonl", dolly)
    write_jsonl(root / "self-inst" / "test.jsonl", [{"instruction": "Fix: he go", "output": "He goes."}] * 2)
    write_jsonl(root / "vicuna" / "test.jsonl", [{"instruction": f"Why {i}?", "output": "Because."} for i in range(2)])
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A saved tiny student (GPT-2 tokenizer) and teacher (Llama-2 tokenizer)."""
    root = tmp_path_factory.mktemp("models")
    for role, tokenizer_name, family, hidden_size, seed in (
        ("student", "gpt2", "gpt2", 16, 1),
        ("teacher", "llama2", "llama", 24, 2),
    ):
        save_tiny_model(root / role, tokenizer_name, family, hidden_size, seed)
    return root


def run_evaluation(model_dir, data_dir, output_dir, benchmarks, seeds):
    argv = ["--model_name_or_path", str(model_dir), "--data_dir", str(data_dir), "--output_dir", str(output_dir)]
    return evaluate([*argv, "--benchmarks", benchmarks, "--seeds", str(seeds), *QUICK, "--update_model_card"])


def model_index_scores(card_text_or_path):
    """`{dataset name: (dataset id, metric type, value)}` read back from the card's `model-index` metadata."""
    if os.path.isfile(card_text_or_path):
        metadata = metadata_load(card_text_or_path)
    else:
        metadata = ModelCard(card_text_or_path).data.to_dict()
    (entry,) = metadata["model-index"]
    scores = {}
    for result in entry["results"]:
        assert result["task"]["type"] == "text-generation"
        (metric,) = result["metrics"]
        assert result["dataset"]["name"] not in scores  # one result per benchmark
        scores[result["dataset"]["name"]] = (result["dataset"]["type"], metric["type"], metric["value"])
    return scores


def expected_scores(*results_records):
    """What the card must hold after these evaluations, the later ones winning."""
    expected = {}
    for results in results_records:
        for name, summary in results["benchmarks"].items():
            expected[TITLES[name]] = (BENCHMARKS[name].hub_repo, "rouge", summary["mean"])
    return expected


def table_rows(card_text):
    return [line for line in card_text.splitlines() if line.startswith("| ") and not line.startswith("| Benchmark")]


def test_evaluate_writes_its_scores_as_model_index_and_a_table(folders, data_dir, tmp_path):
    student = tmp_path / "student"
    shutil.copytree(folders / "student", student)
    results = run_evaluation(student, data_dir, tmp_path / "eval", "dolly,vicuna", seeds=2)

    card = student / "README.md"
    assert model_index_scores(str(card)) == expected_scores(results)
    text = card.read_text(encoding="utf-8")
    assert ModelCard.load(card).data.model_name == "student"
    rows = table_rows(text)
    assert len(rows) == 2
    for name, row in zip(("dolly", "vicuna"), rows):
        summary = results["benchmarks"][name]
        assert row == f"| {TITLES[name]} | {summary['mean']:.2f} ± {summary['std']:.2f} | 2 | 2 |"
    assert "seeds 10, 20" in text


def test_a_second_evaluation_updates_the_card_instead_of_adding_to_it(folders, data_dir, tmp_path):
    student = tmp_path / "student"
    shutil.copytree(folders / "student", student)
    first = run_evaluation(student, data_dir, tmp_path / "eval", "dolly,vicuna", seeds=2)
    second = run_evaluation(student, data_dir, tmp_path / "eval", "dolly,self-inst", seeds=1)

    card = student / "README.md"
    assert first["benchmarks"]["dolly"]["mean"] != second["benchmarks"]["dolly"]["mean"]  # seed 20 left out
    assert model_index_scores(str(card)) == expected_scores(first, second)
    text = card.read_text(encoding="utf-8")
    assert text.count(SCORES_BEGIN) == 1
    rows = table_rows(text)
    assert [row.split("|")[1].strip() for row in rows] == ["Dolly", "Vicuna", "Self-Inst"]
    assert rows[0].split("|")[3].strip() == "1"  # the second evaluation's one seed


def test_update_model_card_needs_a_local_folder(data_dir, tmp_path):
    with pytest.raises(ValueError, match="--update_model_card"):
        run_evaluation("someone/not-a-folder", data_dir, tmp_path / "eval", "dolly", seeds=1)


def make_trainer(folders, tmp_path, **overrides):
    args = make_config(tmp_path, teacher_model_name_or_path=str(folders / "teacher"), **overrides)
    return DWAKDTrainer(
        model=AutoModelForCausalLM.from_pretrained(folders / "student"),
        args=args,
        train_dataset=Dataset.from_list(ROWS),
        processing_class=shared_tokenizers()[0],
    )


def test_push_after_an_evaluation_uploads_its_scores_with_the_student_only(folders, data_dir, tmp_path, monkeypatch):
    uploads = record_hub_uploads(monkeypatch)
    trainer = make_trainer(folders, tmp_path, max_steps=1, hub_model_id="someone/tiny-student")
    trainer.hub_model_id = "someone/tiny-student"
    trainer.train()
    trainer.save_model()
    trainer.create_model_card()  # as each checkpoint save does: evaluate then writes into TRL's card
    output_dir = trainer.args.output_dir
    results = run_evaluation(output_dir, data_dir, tmp_path / "eval", "dolly,vicuna", seeds=1)
    trainer.push_to_hub()

    (upload,) = uploads
    card = upload["card"]
    assert upload["repo_id"] == "someone/tiny-student"
    assert model_index_scores(card) == expected_scores(results)
    assert card.count(SCORES_BEGIN) == 1 and len(table_rows(card)) == 2
    assert f"Distilled from the teacher model `{folders / 'teacher'}` with `dwakd`" in card
    assert set(upload["names"]) == UPLOADED_FILES
    # The weights are the student's, all of them, and nothing of the teacher.
    with safe_open(upload["folder"] / "model.safetensors", "pt") as weights:
        shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
    student = AutoModelForCausalLM.from_pretrained(folders / "student")
    tied = {"lm_head.weight"} if student.config.tie_word_embeddings else set()
    assert shapes == {name: tuple(value.shape) for name, value in student.state_dict().items() if name not in tied}


def test_a_run_with_a_teacher_cache_names_its_teacher_on_the_card(folders, tmp_path):
    args = make_config(
        tmp_path, teacher_model_name_or_path=str(folders / "teacher"), teacher_cache_dir=str(tmp_path / "cache")
    )
    build_teacher_cache(args, Dataset.from_list(ROWS), student_tokenizer=shared_tokenizers()[0])
    trainer = make_trainer(folders, tmp_path, teacher_cache_dir=str(tmp_path / "cache"))
    assert trainer.teacher_model is None and trainer.cached_teacher is not None

    trainer.create_model_card()

    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert f"Distilled from the teacher model `{os.path.realpath(folders / 'teacher')}` with `dwakd`" in card
